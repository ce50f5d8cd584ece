//! Reading the final answer out of arbitrary model output.

/// The text after the last `#` of `completion`, if there is one.
pub(crate) fn after_marker(completion: &str) -> Option<&str> {
    completion.rfind('#').map(|i| &completion[i + 1..])
}

/// The integer right after the last `#` (spaces allowed before it, an optional `-`),
/// normalized without leading zeros. Any length: numbers are compared as text, never parsed
/// into a machine integer.
pub(crate) fn integer_answer(completion: &str) -> Option<String> {
    let rest = after_marker(completion)?.trim_start();
    let sign = usize::from(rest.starts_with('-'));
    let end = rest[sign..]
        .find(|c: char| !c.is_ascii_digit())
        .map_or(rest.len(), |i| sign + i);
    crate::math::integer_text(&rest[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integer_answers_from_tricky_text() {
        let cases = [
            ("#632", Some("632")),
            ("7+5+0=12#632", Some("632")),
            ("#12 then #632", Some("632")),
            ("#  0632xyz", Some("632")),
            ("#000", Some("0")),
            ("#-0", Some("0")),
            ("#-17", Some("-17")),
            ("632", None),
            ("#", None),
            ("# abc", None),
            ("#六三二", None),
            ("#٦٣٢", None),
            ("é#42ü", Some("42")),
            (
                "#123456789012345678901234567890123456789012345",
                Some("123456789012345678901234567890123456789012345"),
            ),
        ];
        for (text, want) in cases {
            assert_eq!(integer_answer(text).as_deref(), want, "{text:?}");
        }
    }
}
