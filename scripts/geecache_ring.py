#!/usr/bin/env python3
"""GeeCache's consistent-hash ring, written independently of the Rust code, to produce golden
owners: vnode point = crc32(str(i) + peer), key point = crc32(key), owner = first point >= key
point, wrapping (Go: sort.Search over the sorted points).

    python3 scripts/geecache_ring.py > tests/golden/ring_owners.txt
"""
import bisect, zlib

peers = [f"http://10.0.1.{100 + i}:8001" for i in range(3)]
replicas = 150
owner_of = {}
for p in peers:  # GeeCache's Add: a later peer overwrites an equal point
    for i in range(replicas):
        owner_of[zlib.crc32(f"{i}{p}".encode())] = p
points = sorted(owner_of)
keys = ["Tom", "Jack", "Sam", "", "key with spaces", "ключ", "a/b"] + [str(i) for i in range(1, 201)]
for k in keys:
    if not k:
        continue
    h = zlib.crc32(k.encode())
    idx = bisect.bisect_left(points, h) % len(points)
    print(f"{k}\t{owner_of[points[idx]]}")
