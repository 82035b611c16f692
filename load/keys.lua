-- wrk script: GET /api?group=products&key=K with K uniform over 1..KEYS (default 10000),
-- or, with MODE=seq, each thread walking its own sequence of keys (to fill a cache).
local keys = tonumber(os.getenv("KEYS") or "10000")
local seq = os.getenv("MODE") == "seq"
local threads = 0

function setup(thread)
  thread:set("offset", threads)
  threads = threads + 1
end

function init(args)
  n = offset
  math.randomseed(os.time() + offset)
end

function request()
  local k
  if seq then
    n = n + 2
    k = n
  else
    k = math.random(1, keys)
  end
  return wrk.format("GET", "/api?group=products&key=" .. k)
end
