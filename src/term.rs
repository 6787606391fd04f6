//! What the terminal asks of the output: colours or none.

/// `NO_COLOR` is set (to anything but the empty string): no colours anywhere.
pub fn no_color() -> bool {
    std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty())
}
