//! Validation of POSIX shared-memory object names.

use crate::error::SegmentError;

/// Longest name accepted, leading `/` included (Linux `NAME_MAX`).
pub const MAX_NAME_LEN: usize = 255;

/// Normalises `name` to the `/name` form `shm_open` wants, or says why it is invalid.
///
/// A leading `/` is optional; the rest must be non-empty, contain no `/` and no NUL,
/// not be `.` or `..`, and the whole fit in [`MAX_NAME_LEN`] bytes.
pub(crate) fn normalize(name: &str) -> Result<String, SegmentError> {
    let bad = |reason| SegmentError::InvalidName {
        name: name.to_owned(),
        reason,
    };
    let body = name.strip_prefix('/').unwrap_or(name);
    if body.is_empty() {
        return Err(bad("empty"));
    }
    if body.contains('/') {
        return Err(bad("contains '/' after the leading one"));
    }
    if body.contains('\0') {
        return Err(bad("contains a NUL byte"));
    }
    if body == "." || body == ".." {
        return Err(bad("'.' and '..' are not object names"));
    }
    if body.len() + 1 > MAX_NAME_LEN {
        return Err(bad("longer than 255 bytes"));
    }
    Ok(format!("/{body}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_and_normalises() {
        assert_eq!(normalize("abc").unwrap(), "/abc");
        assert_eq!(normalize("/abc").unwrap(), "/abc");
    }

    #[test]
    fn rejects_bad_names() {
        for n in ["", "/", "a/b", "/a/b", "a\0b", "..", &"x".repeat(255)] {
            assert!(
                matches!(normalize(n), Err(SegmentError::InvalidName { .. })),
                "{n:?}"
            );
        }
        assert!(normalize(&"x".repeat(254)).is_ok());
    }
}
