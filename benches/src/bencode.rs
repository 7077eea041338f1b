//! Bencode, as rtpengine's ng control protocol carries it: integers, byte
//! strings, lists and dictionaries. Enough for the bench's offer, answer and
//! delete commands (no crate: the well-known ones are unmaintained, and this
//! is forty lines).

use std::collections::BTreeMap;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    Int(i64),
    Bytes(Vec<u8>),
    List(Vec<Value>),
    /// Keys sorted, as bencode requires.
    Dict(BTreeMap<Vec<u8>, Value>),
}

impl Value {
    pub fn str(s: &str) -> Value {
        Value::Bytes(s.as_bytes().to_vec())
    }

    pub fn list(items: &[&str]) -> Value {
        Value::List(items.iter().map(|s| Value::str(s)).collect())
    }

    pub fn dict(entries: Vec<(&str, Value)>) -> Value {
        Value::Dict(
            entries
                .into_iter()
                .map(|(k, v)| (k.as_bytes().to_vec(), v))
                .collect(),
        )
    }

    /// A dictionary's value at `key`, as text.
    pub fn get_str(&self, key: &str) -> Option<String> {
        match self {
            Value::Dict(d) => match d.get(key.as_bytes())? {
                Value::Bytes(b) => Some(String::from_utf8_lossy(b).into_owned()),
                _ => None,
            },
            _ => None,
        }
    }

    pub fn encode(&self, out: &mut Vec<u8>) {
        match self {
            Value::Int(i) => out.extend_from_slice(format!("i{i}e").as_bytes()),
            Value::Bytes(b) => {
                out.extend_from_slice(format!("{}:", b.len()).as_bytes());
                out.extend_from_slice(b);
            }
            Value::List(items) => {
                out.push(b'l');
                items.iter().for_each(|v| v.encode(out));
                out.push(b'e');
            }
            Value::Dict(d) => {
                out.push(b'd');
                for (k, v) in d {
                    Value::Bytes(k.clone()).encode(out);
                    v.encode(out);
                }
                out.push(b'e');
            }
        }
    }
}

/// Decodes one value from the front of `input`; returns it and the rest.
pub fn decode(input: &[u8]) -> Result<(Value, &[u8]), String> {
    let (&first, rest) = input.split_first().ok_or("bencode: unexpected end")?;
    match first {
        b'i' => {
            let end = rest
                .iter()
                .position(|&c| c == b'e')
                .ok_or("bencode: unterminated integer")?;
            let n = std::str::from_utf8(&rest[..end])
                .ok()
                .and_then(|s| s.parse().ok())
                .ok_or("bencode: bad integer")?;
            Ok((Value::Int(n), &rest[end + 1..]))
        }
        b'l' | b'd' => {
            let mut items = Vec::new();
            let mut rest = rest;
            while rest.first() != Some(&b'e') {
                let (v, r) = decode(rest)?;
                items.push(v);
                rest = r;
            }
            let rest = &rest[1..];
            if first == b'l' {
                return Ok((Value::List(items), rest));
            }
            let mut dict = BTreeMap::new();
            let mut it = items.into_iter();
            while let Some(k) = it.next() {
                let Value::Bytes(k) = k else {
                    return Err("bencode: a dictionary key that is not a string".into());
                };
                dict.insert(k, it.next().ok_or("bencode: a key without a value")?);
            }
            Ok((Value::Dict(dict), rest))
        }
        b'0'..=b'9' => {
            let colon = input
                .iter()
                .position(|&c| c == b':')
                .ok_or("bencode: bad string")?;
            let len: usize = std::str::from_utf8(&input[..colon])
                .ok()
                .and_then(|s| s.parse().ok())
                .ok_or("bencode: bad string length")?;
            let body = input
                .get(colon + 1..colon + 1 + len)
                .ok_or("bencode: short string")?;
            Ok((Value::Bytes(body.to_vec()), &input[colon + 1 + len..]))
        }
        _ => Err(format!("bencode: unexpected byte {first:#04x}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_command_round_trips() {
        let v = Value::dict(vec![
            ("command", Value::str("offer")),
            (
                "codec",
                Value::dict(vec![("transcode", Value::list(&["PCMU"]))]),
            ),
            ("n", Value::Int(-3)),
        ]);
        let mut out = Vec::new();
        v.encode(&mut out);
        assert_eq!(
            String::from_utf8_lossy(&out),
            "d5:codecd9:transcodel4:PCMUee7:command5:offer1:ni-3ee"
        );
        let (back, rest) = decode(&out).unwrap();
        assert_eq!(back, v);
        assert!(rest.is_empty());
        assert_eq!(back.get_str("command").as_deref(), Some("offer"));
        assert!(decode(b"5:abc").is_err());
        assert!(decode(b"d1:ae").is_err());
    }
}
