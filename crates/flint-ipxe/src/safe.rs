//! Rules for strings that end up inside an iPXE script.
//!
//! iPXE reads a script line by line, expands `${...}` anywhere, splits words on whitespace,
//! treats a word starting with `#` as a comment, and treats the words `||`, `&&` and `;` as
//! command separators. Its option parser also reads a leading `-` as an option. Rather than
//! escaping (iPXE has no reliable quoting), every rule here is an allowlist that makes all of
//! those impossible, so data can only ever be an argument of the command we wrote.

/// Profile and node names: they become menu item keys and `goto` labels.
pub fn name(s: &str) -> Result<(), &'static str> {
    let ok = !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
        && !s.starts_with(['-', '.']);
    ok.then_some(())
        .ok_or("a name of 1 to 63 letters, digits, '.', '_' or '-', not starting with '-' or '.'")
}

fn path_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b'~' | b'/' | b'+')
}

/// Kernel and initrd paths, relative to the images URL.
///
/// No empty segment: `//` makes some HTTP servers answer a redirect, which UEFI HTTP Boot does
/// not follow. No `..`: the boot server serves one folder and nothing outside it.
pub fn image_path(s: &str) -> Result<(), &'static str> {
    let ok = !s.is_empty()
        && s.len() <= 1024
        && s.bytes().all(path_byte)
        && !s.starts_with('-')
        && s.split('/')
            .all(|seg| !seg.is_empty() && seg != "." && seg != "..");
    ok.then_some(()).ok_or(
        "a relative path of letters, digits and '._-~+' separated by single '/', \
         without '.' or '..' segments or a leading '-'",
    )
}

/// The images base URL and the boot server's own URL.
pub fn base_url(s: &str) -> Result<(), &'static str> {
    const WHAT: &str = "an http:// or https:// URL of letters, digits and '-._~:/?=%+,@[]' \
                        (no spaces, '$', '&', ';', '#' or quotes)";
    let chars_ok = s.bytes().all(|b| {
        path_byte(b) || matches!(b, b':' | b'?' | b'=' | b'%' | b',' | b'@' | b'[' | b']')
    });
    if !chars_ok || s.len() > 2048 {
        return Err(WHAT);
    }
    match url::Url::parse(s) {
        Ok(u) if matches!(u.scheme(), "http" | "https") && u.host_str().is_some() => Ok(()),
        _ => Err(WHAT),
    }
}

/// The kernel command line: the rest of the `kernel` line, so spaces are allowed between words.
///
/// Forbidden: control characters and non-ASCII (a newline would start a new command), `$` (iPXE
/// expands `${`), `|`, `&`, `;` (command separators), `#` (comments), quotes and `\` (iPXE's
/// handling of them differs between versions), and words starting with `-` (iPXE's option parser
/// could take them as options of `kernel`). Kernel parameters do not need any of these.
pub fn cmdline(s: &str) -> Result<(), &'static str> {
    let chars_ok = s.bytes().all(|b| {
        b == b' '
            || (b.is_ascii_graphic()
                && !matches!(
                    b,
                    b'$' | b'|' | b'&' | b';' | b'#' | b'"' | b'\'' | b'\\' | b'`'
                ))
    });
    let words_ok = s.split(' ').all(|w| !w.starts_with('-'));
    (chars_ok && words_ok && s.len() <= 4096)
        .then_some(())
        .ok_or(
            "kernel parameters of printable ASCII separated by spaces, without '$', '|', '&', ';', \
         '#', quotes, '\\' or a word starting with '-'",
        )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(name("node-01.rack_2").is_ok());
        for bad in ["", "-x", ".x", "a b", "a\nb", "a${x}", "é", &"a".repeat(64)] {
            assert!(name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn image_paths() {
        assert!(image_path("debian/13/vmlinuz-6.12+1").is_ok());
        for bad in [
            "", "/abs", "a//b", "../x", "a/./b", "a b", "a\nb", "${x}", "-x", "a/", "a?b",
        ] {
            assert!(image_path(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn urls() {
        assert!(base_url("http://10.0.200.2:8080/images").is_ok());
        assert!(base_url("https://[fd00::2]/x/").is_ok());
        for bad in [
            "ftp://x/",
            "http://x/a b",
            "http://x/${y}",
            "http://x/#f",
            "http://x/?a&b",
            "images/",
            "http://x/\n",
        ] {
            assert!(base_url(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn cmdlines() {
        assert!(cmdline("").is_ok());
        assert!(cmdline("console=ttyS0,115200n8 ip=dhcp root=/dev/nfs quiet").is_ok());
        for bad in [
            "a\nb", "a\rb", "x=${y}", "a || b", "a && b", "a ; b", "# c", "a -b", "-a", "\"q\"",
            "é", "a\tb",
        ] {
            assert!(cmdline(bad).is_err(), "{bad:?}");
        }
    }
}
