//! A small TTLV tree over `kmip-ttlv`'s primitive (de)serializers. `kmip-protocol`'s typed
//! requests cannot carry a Key Wrapping Specification and its responses drop the key wrapping
//! data, so requests and responses are built and read as trees instead: every item keeps its
//! tag, and a wrapped key is found whether the server sends it as a Byte String or, as PyKMIP
//! does, inside a Key Value structure.

use std::io::{Cursor, Read};

use kmip_ttlv::types::{
    SerializableTtlvType, TtlvBigInteger, TtlvBoolean, TtlvByteString, TtlvDateTime,
    TtlvEnumeration, TtlvInteger, TtlvLongInteger, TtlvTag, TtlvTextString, TtlvType,
};

/// Largest message accepted from a server.
pub const MAX_MESSAGE: usize = 1 << 20;

#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Structure(Vec<Item>),
    Integer(i32),
    LongInteger(i64),
    BigInteger(Vec<u8>),
    Enumeration(u32),
    Boolean(bool),
    TextString(String),
    ByteString(Vec<u8>),
    DateTime(i64),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Item {
    pub tag: u32,
    pub value: Value,
}

#[derive(Debug, thiserror::Error)]
pub enum TtlvError {
    #[error("malformed TTLV: {0}")]
    Malformed(String),
    #[error("TTLV message too large ({0} bytes)")]
    TooLarge(usize),
}

fn malformed(e: impl std::fmt::Debug) -> TtlvError {
    TtlvError::Malformed(format!("{e:?}"))
}

impl Item {
    pub fn structure(tag: u32, children: Vec<Item>) -> Item {
        Item {
            tag,
            value: Value::Structure(children),
        }
    }
    pub fn int(tag: u32, v: i32) -> Item {
        Item {
            tag,
            value: Value::Integer(v),
        }
    }
    pub fn enumeration(tag: u32, v: u32) -> Item {
        Item {
            tag,
            value: Value::Enumeration(v),
        }
    }
    pub fn text(tag: u32, v: &str) -> Item {
        Item {
            tag,
            value: Value::TextString(v.to_owned()),
        }
    }

    pub fn encode(&self) -> Result<Vec<u8>, TtlvError> {
        let mut out = Vec::new();
        self.write(&mut out)?;
        Ok(out)
    }

    fn write(&self, out: &mut Vec<u8>) -> Result<(), TtlvError> {
        let t = self.tag.to_be_bytes();
        TtlvTag::from([t[1], t[2], t[3]])
            .write(out)
            .map_err(malformed)?;
        match &self.value {
            Value::Structure(children) => {
                let mut body = Vec::new();
                for c in children {
                    c.write(&mut body)?;
                }
                TtlvType::Structure.write(out).map_err(malformed)?;
                out.extend_from_slice(&(body.len() as u32).to_be_bytes());
                out.extend_from_slice(&body);
                Ok(())
            }
            Value::Integer(v) => TtlvInteger(*v).write(out).map_err(malformed),
            Value::LongInteger(v) => TtlvLongInteger(*v).write(out).map_err(malformed),
            Value::BigInteger(v) => TtlvBigInteger(v.clone()).write(out).map_err(malformed),
            Value::Enumeration(v) => TtlvEnumeration(*v).write(out).map_err(malformed),
            Value::Boolean(v) => TtlvBoolean(*v).write(out).map_err(malformed),
            Value::TextString(v) => TtlvTextString(v.clone()).write(out).map_err(malformed),
            Value::ByteString(v) => TtlvByteString(v.clone()).write(out).map_err(malformed),
            Value::DateTime(v) => TtlvDateTime(*v).write(out).map_err(malformed),
        }
    }

    /// Decodes exactly one item that spans the whole buffer.
    pub fn decode(bytes: &[u8]) -> Result<Item, TtlvError> {
        if bytes.len() > MAX_MESSAGE {
            return Err(TtlvError::TooLarge(bytes.len()));
        }
        let mut cur = Cursor::new(bytes);
        let item = read_item(&mut cur, 0)?;
        if cur.position() as usize != bytes.len() {
            return Err(TtlvError::Malformed(
                "trailing bytes after the message".into(),
            ));
        }
        Ok(item)
    }

    pub fn child(&self, tag: u32) -> Option<&Item> {
        self.children().iter().find(|c| c.tag == tag)
    }

    pub fn children(&self) -> &[Item] {
        match &self.value {
            Value::Structure(c) => c,
            _ => &[],
        }
    }

    pub fn all(&self, tag: u32) -> impl Iterator<Item = &Item> {
        self.children().iter().filter(move |c| c.tag == tag)
    }

    pub fn as_text(&self) -> Option<&str> {
        match &self.value {
            Value::TextString(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_enum(&self) -> Option<u32> {
        match &self.value {
            Value::Enumeration(v) => Some(*v),
            _ => None,
        }
    }

    pub fn as_int(&self) -> Option<i32> {
        match &self.value {
            Value::Integer(v) => Some(*v),
            _ => None,
        }
    }

    pub fn as_bytes(&self) -> Option<&[u8]> {
        match &self.value {
            Value::ByteString(v) => Some(v),
            _ => None,
        }
    }
}

fn read_item(cur: &mut Cursor<&[u8]>, depth: usize) -> Result<Item, TtlvError> {
    if depth > 16 {
        return Err(TtlvError::Malformed("structures nested too deeply".into()));
    }
    let tag = *TtlvTag::read(cur).map_err(malformed)?;
    let typ = TtlvType::read(cur).map_err(malformed)?;
    if matches!(
        typ,
        TtlvType::BigInteger | TtlvType::TextString | TtlvType::ByteString
    ) {
        // The decoder allocates the declared length before reading: check it first.
        let pos = cur.position() as usize;
        let rest = cur.get_ref().len().saturating_sub(pos);
        let declared = cur
            .get_ref()
            .get(pos..pos + 4)
            .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize)
            .ok_or_else(|| TtlvError::Malformed("truncated length".into()))?;
        if declared > rest - 4 {
            return Err(TtlvError::Malformed("value longer than the message".into()));
        }
    }
    let value = match typ {
        TtlvType::Structure => {
            let mut len = [0u8; 4];
            cur.read_exact(&mut len).map_err(malformed)?;
            let len = u32::from_be_bytes(len) as usize;
            let start = cur.position() as usize;
            let end = start
                .checked_add(len)
                .filter(|e| *e <= cur.get_ref().len())
                .ok_or_else(|| TtlvError::Malformed("structure longer than the message".into()))?;
            let mut children = Vec::new();
            while (cur.position() as usize) < end {
                children.push(read_item(cur, depth + 1)?);
            }
            if cur.position() as usize != end {
                return Err(TtlvError::Malformed(
                    "structure length does not match its items".into(),
                ));
            }
            Value::Structure(children)
        }
        TtlvType::Integer => Value::Integer(*TtlvInteger::read(cur).map_err(malformed)?),
        TtlvType::LongInteger => {
            Value::LongInteger(*TtlvLongInteger::read(cur).map_err(malformed)?)
        }
        TtlvType::BigInteger => Value::BigInteger(TtlvBigInteger::read(cur).map_err(malformed)?.0),
        TtlvType::Enumeration => {
            Value::Enumeration(*TtlvEnumeration::read(cur).map_err(malformed)?)
        }
        TtlvType::Boolean => Value::Boolean(*TtlvBoolean::read(cur).map_err(malformed)?),
        TtlvType::TextString => Value::TextString(TtlvTextString::read(cur).map_err(malformed)?.0),
        TtlvType::ByteString => Value::ByteString(TtlvByteString::read(cur).map_err(malformed)?.0),
        TtlvType::DateTime => Value::DateTime(*TtlvDateTime::read(cur).map_err(malformed)?),
    };
    Ok(Item { tag, value })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_a_nested_message() {
        let m = Item::structure(
            0x420078,
            vec![
                Item::structure(0x420077, vec![Item::int(0x42000D, 1)]),
                Item::enumeration(0x42005C, 0x0A),
                Item::text(0x420094, "key-1"),
                Item {
                    tag: 0x420043,
                    value: Value::ByteString(vec![1, 2, 3, 4, 5]),
                },
            ],
        );
        let bytes = m.encode().expect("encode");
        assert_eq!(bytes.len() % 8, 0);
        assert_eq!(&bytes[..4], &[0x42, 0x00, 0x78, 0x01]);
        assert_eq!(Item::decode(&bytes).expect("decode"), m);
    }

    #[test]
    fn refuses_a_declared_length_beyond_the_message() {
        // A byte string (type 08) claiming 4 GiB in a 16-byte message.
        let bytes = [
            0x42, 0x00, 0x08, 0x08, 0xff, 0xff, 0xff, 0xf0, 1, 2, 3, 4, 5, 6, 7, 8,
        ];
        // Refused by the length check, before the decoder would allocate the declared size.
        let e = Item::decode(&bytes).expect_err("refused").to_string();
        assert!(e.contains("value longer than the message"), "{e}");
        let text = [
            0x42, 0x00, 0x08, 0x07, 0x00, 0x00, 0x00, 0x09, 1, 2, 3, 4, 5, 6, 7, 8,
        ];
        let e = Item::decode(&text).expect_err("refused").to_string();
        assert!(e.contains("value longer than the message"), "{e}");
    }

    #[test]
    fn refuses_truncated_and_trailing_input() {
        let bytes = Item::text(0x420094, "abc").encode().expect("encode");
        assert!(Item::decode(&bytes[..bytes.len() - 3]).is_err());
        let mut longer = bytes.clone();
        longer.extend([0u8; 8]);
        assert!(Item::decode(&longer).is_err());
    }
}
