//! CipherTrust Manager's request vocabulary: fields its documentation defines for a route that
//! the bridge accepts but has no use for. Bodies keep `deny_unknown_fields`, so a typo is still a
//! 400 naming it; CipherTrust's own names are declared as [`Unused`] fields instead, and each
//! body lists the ones present so that the HTTP layer can log them.

/// A documented CipherTrust field whose value the bridge reads and discards.
pub type Unused = Option<serde::de::IgnoredAny>;

/// A documented CipherTrust field whose meaning the bridge does not implement and must not
/// ignore (it changes how the rest of the request is read). Only whether it carries a value is
/// kept: `null`, `false`, `""`, `[]` and `{}` say nothing; anything else does. The value itself
/// is never stored (some of these carry passwords).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Given(pub bool);

impl<'de> serde::Deserialize<'de> for Given {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Given;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_bool<E>(self, b: bool) -> Result<Given, E> {
                Ok(Given(b))
            }
            fn visit_i64<E>(self, _: i64) -> Result<Given, E> {
                Ok(Given(true))
            }
            fn visit_u64<E>(self, _: u64) -> Result<Given, E> {
                Ok(Given(true))
            }
            fn visit_f64<E>(self, _: f64) -> Result<Given, E> {
                Ok(Given(true))
            }
            fn visit_str<E>(self, s: &str) -> Result<Given, E> {
                Ok(Given(!s.is_empty()))
            }
            fn visit_unit<E>(self) -> Result<Given, E> {
                Ok(Given(false))
            }
            fn visit_none<E>(self) -> Result<Given, E> {
                Ok(Given(false))
            }
            fn visit_some<D: serde::Deserializer<'de>>(self, d: D) -> Result<Given, D::Error> {
                <Given as serde::Deserialize>::deserialize(d)
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut a: A) -> Result<Given, A::Error> {
                let mut any = false;
                while a.next_element::<serde::de::IgnoredAny>()?.is_some() {
                    any = true;
                }
                Ok(Given(any))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, mut a: A) -> Result<Given, A::Error> {
                let mut any = false;
                while a
                    .next_entry::<serde::de::IgnoredAny, serde::de::IgnoredAny>()?
                    .is_some()
                {
                    any = true;
                }
                Ok(Given(any))
            }
        }
        d.deserialize_any(V)
    }
}

/// Refuses each named field that carries a value, with `why`.
pub fn refuse_given(fields: &[(&str, Given)], why: &str) -> Result<(), String> {
    match fields.iter().find(|(_, g)| g.0) {
        Some((name, _)) => Err(format!("{name}: {why}")),
        None => Ok(()),
    }
}

/// A request body that knows which of CipherTrust's fields it accepted without using them.
pub trait Vocabulary {
    /// The names (with their path, `aws_param.X`) of the unused fields the request carried.
    fn unused(&self) -> Vec<String> {
        Vec::new()
    }
}

/// The names of the given fields of `$s` that are present (`Some`).
#[macro_export]
macro_rules! unused_fields {
    ($s:expr, $prefix:expr; $($f:ident),* $(,)?) => {{
        let mut v: Vec<String> = Vec::new();
        $( if $s.$f.is_some() { v.push(format!("{}{}", $prefix, stringify!($f))); } )*
        v
    }};
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Body {
        #[allow(dead_code)]
        name: Option<String>,
        #[serde(default)]
        cookies: Unused,
        #[serde(default)]
        labels: Unused,
    }

    impl Vocabulary for Body {
        fn unused(&self) -> Vec<String> {
            unused_fields!(self, ""; cookies, labels)
        }
    }

    #[test]
    fn documented_fields_are_taken_and_typos_refused() {
        let b: Body = serde_json::from_str(r#"{"name":"a","cookies":true,"labels":["x",{"y":1}]}"#)
            .expect("documented fields parse whatever their value");
        assert_eq!(b.unused(), vec!["cookies", "labels"]);
        let e = serde_json::from_str::<Body>(r#"{"nme":"a"}"#)
            .err()
            .expect("a typo is refused");
        assert!(e.to_string().contains("unknown field `nme`"), "{e}");
        let b: Body = serde_json::from_str(r#"{"cookies":null}"#).expect("null");
        assert!(b.unused().is_empty());
    }

    #[test]
    fn given_says_only_whether_a_value_was_sent() {
        #[derive(Deserialize)]
        struct B {
            #[serde(default)]
            g: Given,
        }
        for (text, want) in [
            (r#"{}"#, false),
            (r#"{"g":null}"#, false),
            (r#"{"g":false}"#, false),
            (r#"{"g":""}"#, false),
            (r#"{"g":[]}"#, false),
            (r#"{"g":{}}"#, false),
            (r#"{"g":true}"#, true),
            (r#"{"g":0}"#, true),
            (r#"{"g":"k"}"#, true),
            (r#"{"g":{"password":"p"}}"#, true),
            (r#"{"g":[1]}"#, true),
        ] {
            let b: B = serde_json::from_str(text).expect(text);
            assert_eq!(b.g.0, want, "{text}");
        }
        assert!(refuse_given(&[("a", Given(false)), ("b", Given(true))], "no").is_err());
        assert!(refuse_given(&[("a", Given(false))], "no").is_ok());
    }
}
