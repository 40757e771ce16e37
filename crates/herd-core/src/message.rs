//! Error messages that echo what a client sent are cut to a bounded length, so a 100 kB
//! timezone or flag key never comes back as 100 kB of status text (a gRPC client's metadata
//! limit is 16 kB: it would see `RESOURCE_EXHAUSTED` instead of the error).

/// The longest error message herd returns, in bytes (before the note of what was cut).
pub const MAX_MESSAGE_BYTES: usize = 1024;

/// `message` cut at a character boundary to at most [`MAX_MESSAGE_BYTES`], with a note of
/// how many bytes were left out.
pub fn clip(message: String) -> String {
    if message.len() <= MAX_MESSAGE_BYTES {
        return message;
    }
    let mut end = MAX_MESSAGE_BYTES;
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    format!(
        "{}… ({} more bytes not shown)",
        &message[..end],
        message.len() - end
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_messages_are_cut_at_a_char_boundary() {
        assert_eq!(clip("short".into()), "short");
        let long = format!("timezone: unknown {:?}", "é".repeat(2000));
        let cut = clip(long.clone());
        assert!(cut.len() < MAX_MESSAGE_BYTES + 40, "{}", cut.len());
        assert!(cut.starts_with("timezone: unknown \"éé"));
        let shown = cut.find('…').expect("mark");
        assert!(cut.ends_with(&format!("({} more bytes not shown)", long.len() - shown)));
    }
}
