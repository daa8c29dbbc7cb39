//! Event lines, whichever source carries them: cutting a byte stream into lines under a length
//! bound (an over-long line is dropped as it is read, never held whole), and the numbering and
//! blank-line skipping both event sources apply before a line is parsed.

/// Cuts a stream, fed chunk by chunk, into complete lines; keeps what does not yet end in a
/// newline for the next chunk.
#[derive(Default)]
pub struct LineCutter {
    /// Bytes read that do not yet end in a newline.
    pending: Vec<u8>,
    /// Inside an over-long line: how many of its bytes were dropped so far (0: not skipping).
    skipping: u64,
}

/// What the chunks fed so far completed.
#[derive(Default)]
pub struct Cut {
    /// Complete lines, without their newline.
    pub lines: Vec<Vec<u8>>,
    /// Stream bytes the complete lines and the whole skipped lines cover, newlines included.
    pub consumed: u64,
    /// Over-long lines met, each counted once however many chunks it spans.
    pub too_long: u64,
}

impl LineCutter {
    /// Cut `data`; an unfinished line past `max_line` bytes is counted and skipped to its end.
    pub fn feed(&mut self, mut data: &[u8], max_line: usize, cut: &mut Cut) {
        while let Some(pos) = data.iter().position(|b| *b == b'\n') {
            if self.skipping > 0 {
                cut.consumed += self.skipping + pos as u64 + 1;
                self.skipping = 0;
            } else {
                self.pending.extend_from_slice(&data[..pos]);
                cut.consumed += self.pending.len() as u64 + 1;
                cut.lines.push(std::mem::take(&mut self.pending));
            }
            data = &data[pos + 1..];
        }
        if self.skipping > 0 {
            self.skipping += data.len() as u64;
        } else {
            self.pending.extend_from_slice(data);
            if self.pending.len() > max_line {
                cut.too_long += 1;
                self.skipping = self.pending.len() as u64;
                self.pending = Vec::new();
            }
        }
    }

    /// Bytes read but not yet part of a complete line.
    pub fn buffered(&self) -> u64 {
        self.pending.len() as u64 + self.skipping
    }
}

/// Each line that is not blank, a trailing `\r` dropped, with its 1-based number in `lines`.
pub fn numbered<'a>(
    lines: impl IntoIterator<Item = &'a [u8]>,
) -> impl Iterator<Item = (usize, &'a [u8])> {
    lines.into_iter().enumerate().filter_map(|(i, line)| {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        (!line.iter().all(u8::is_ascii_whitespace)).then_some((i + 1, line))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_split_across_chunks_is_whole_and_the_rest_waits() {
        let (mut cutter, mut cut) = (LineCutter::default(), Cut::default());
        cutter.feed(b"ab", 100, &mut cut);
        cutter.feed(b"c\nde", 100, &mut cut);
        assert_eq!(cut.lines, vec![b"abc".to_vec()]);
        assert_eq!((cut.consumed, cutter.buffered()), (4, 2));
    }

    #[test]
    fn an_over_long_line_is_counted_once_and_its_bytes_consumed() {
        let (mut cutter, mut cut) = (LineCutter::default(), Cut::default());
        cutter.feed(b"123456", 4, &mut cut);
        cutter.feed(b"789", 4, &mut cut);
        assert_eq!((cut.too_long, cutter.buffered()), (1, 9));
        cutter.feed(b"0\nok\n", 4, &mut cut);
        assert_eq!(cut.lines, vec![b"ok".to_vec()]);
        assert_eq!((cut.too_long, cut.consumed, cutter.buffered()), (1, 14, 0));
    }

    #[test]
    fn blank_lines_are_skipped_but_keep_their_number() {
        let body: &[u8] = b"a\r\n \n\nb";
        let got: Vec<_> = numbered(body.split(|b| *b == b'\n')).collect();
        assert_eq!(got, vec![(1, &b"a"[..]), (4, &b"b"[..])]);
    }
}
