//! `ke_record`: take NTS-KE records off the input one after another; every
//! record that decodes must re-encode to exactly the bytes it came from and
//! decode back to itself (decode(encode(r)) == r), and every strict prefix of
//! it must be `Incomplete`.

use nts_proto::ke_record::{Decoded, Record};

/// Returns the number of records decoded.
pub fn check(data: &[u8]) -> usize {
    let mut pos = 0;
    let mut records = 0;
    let mut out = Vec::new();
    while pos < data.len() {
        let buf = &data[pos..];
        let (record, critical, consumed) = match Record::decode(buf) {
            Err(_) => break,
            Ok(Decoded::Incomplete) => {
                let complete = buf.len() >= 4
                    && buf.len() >= 4 + usize::from(u16::from_be_bytes([buf[2], buf[3]]));
                assert!(!complete, "Incomplete for a complete record: {buf:02x?}");
                break;
            }
            Ok(Decoded::Record {
                record,
                critical,
                consumed,
            }) => (record, critical, consumed),
        };
        records += 1;
        let announced = usize::from(u16::from_be_bytes([buf[2], buf[3]]));
        assert_eq!(consumed, 4 + announced, "consumed is not header + body");
        assert_eq!(critical, buf[0] & 0x80 != 0, "critical bit misread");
        assert_eq!(
            record.record_type(),
            u16::from_be_bytes([buf[0], buf[1]]) & 0x7fff
        );
        if let Record::Unknown { critical: c, .. } = &record {
            assert_eq!(*c, critical, "Unknown record's critical flag differs");
        }

        out.clear();
        record.encode(critical, &mut out);
        assert_eq!(
            out,
            &buf[..consumed],
            "{record:?} does not re-encode to its bytes"
        );
        match Record::decode(&out) {
            Ok(Decoded::Record {
                record: again,
                critical: c,
                consumed: n,
            }) => {
                assert_eq!(again, record, "decode(encode(r)) != r");
                assert_eq!(c, critical);
                assert_eq!(n, out.len());
            }
            other => panic!("re-encoded {record:?} decodes as {other:?}"),
        }
        for n in [0, 3.min(out.len()), out.len() - 1] {
            assert_eq!(
                Record::decode(&out[..n]),
                Ok(Decoded::Incomplete),
                "prefix of {n} bytes of {record:?}"
            );
        }
        pos += consumed;
    }
    records
}
