//! The peer protocol's protobuf messages (package `geecachepb`, see `proto/geecachepb.proto`).
//! Field numbers follow GeeCache's `geecachepb.proto`; ours are only added under new numbers.

use bytes::Bytes;

#[derive(Clone, PartialEq, prost::Message)]
pub struct Response {
    #[prost(bytes = "bytes", tag = "1")]
    pub value: Bytes,
    #[prost(double, tag = "2")]
    pub minute_qps: f64,
    #[prost(uint64, tag = "3")]
    pub epoch: u64,
}

#[cfg(test)]
mod tests {
    use prost::Message;

    use super::*;

    #[test]
    fn golden_bytes() {
        // What GeeCache's Go code writes for Response{Value: []byte("630")}.
        let plain = Response {
            value: Bytes::from_static(b"630"),
            ..Default::default()
        };
        assert_eq!(plain.encode_to_vec(), [0x0a, 0x03, b'6', b'3', b'0']);
        // Our extra fields, under new numbers: a GeeCache node skips them.
        let full = Response {
            value: Bytes::from_static(b"630"),
            minute_qps: 1.5,
            epoch: 7,
        };
        assert_eq!(
            full.encode_to_vec(),
            [
                0x0a, 0x03, b'6', b'3', b'0', // 1: value
                0x11, 0, 0, 0, 0, 0, 0, 0xf8, 0x3f, // 2: minute_qps = 1.5 (fixed64)
                0x18, 0x07, // 3: epoch = 7
            ]
        );
        assert_eq!(Response::decode(&full.encode_to_vec()[..]).unwrap(), full);
        // Only field 1, as GeeCache sends it, decodes with defaults for the rest.
        let from_go = Response::decode(&[0x0a, 0x02, b'h', b'i'][..]).unwrap();
        assert_eq!((from_go.value.as_ref(), from_go.epoch), (&b"hi"[..], 0));
    }
}
