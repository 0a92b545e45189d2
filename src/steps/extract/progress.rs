//! Reading ffmpeg's `-progress` report as its bytes arrive, in bounded memory.
//!
//! It parses; it never sends progress anywhere or decides whether a run succeeded.

/// The longest line of ffmpeg's `-progress` report kept; its lines are under 40 bytes. A longer
/// line is dropped whole, so no output makes the reader buffer more than this.
pub const PROGRESS_LINE_BYTES_MAX: usize = 1024;

/// What one block of ffmpeg's `-progress` report says, as far as narra reads it. A value a block
/// does not give (or gives as `N/A`) keeps the last one known.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FfmpegProgress {
    /// Bytes of output written so far (`total_size`).
    pub total_size: Option<u64>,
    /// Media time written so far, in microseconds (`out_time_us`; else `out_time_ms`, which ffmpeg
    /// also prints in microseconds).
    pub out_time_us: Option<u64>,
    /// The block ended with `progress=end`: ffmpeg is done.
    pub end: bool,
}

/// Reads ffmpeg's `-progress` report from chunks as they arrive, however they split it: `key=value`
/// lines in blocks, each ended by `progress=continue` or `progress=end`. A block counts only once
/// its `progress=` line arrived, so a half-read block never reports. Unknown keys, lines without
/// `=` and values that are not numbers are ignored. At most one partial line of
/// [`PROGRESS_LINE_BYTES_MAX`] bytes is kept: a longer line is dropped whole, never cut and read.
#[derive(Debug, Default)]
pub struct ProgressParser {
    /// The current line so far.
    line: Vec<u8>,
    /// The current line passed the limit: its bytes are dropped until its end.
    overlong: bool,
    /// An `out_time_us` line was read: `out_time_ms` is then ignored.
    reads_out_time_us: bool,
    /// The values known so far, from this block and those before it.
    known: FfmpegProgress,
}

impl ProgressParser {
    /// Reads a chunk: the last block it completed, if any.
    pub fn feed(&mut self, chunk: &[u8]) -> Option<FfmpegProgress> {
        let mut completed = None;
        let mut rest = chunk;
        while let Some(at) = rest.iter().position(|byte| *byte == b'\n') {
            self.extend_line(&rest[..at]);
            if let Some(block) = self.end_line() {
                completed = Some(block);
            }
            rest = &rest[at + 1..];
        }
        self.extend_line(rest);
        completed
    }

    fn extend_line(&mut self, bytes: &[u8]) {
        if self.overlong {
            return;
        }
        if self.line.len() + bytes.len() > PROGRESS_LINE_BYTES_MAX {
            self.overlong = true;
            self.line = Vec::new();
            return;
        }
        self.line.extend_from_slice(bytes);
    }

    /// Reads the line just ended: the block, when the line ends one.
    fn end_line(&mut self) -> Option<FfmpegProgress> {
        let line = std::mem::take(&mut self.line);
        if std::mem::take(&mut self.overlong) {
            return None;
        }
        let line = std::str::from_utf8(&line).ok()?;
        let (key, value) = line.split_once('=')?;
        let value = value.trim();
        let number = || value.parse::<u64>().ok();
        match key.trim() {
            "total_size" => self.known.total_size = number().or(self.known.total_size),
            "out_time_us" => {
                self.reads_out_time_us = true;
                self.known.out_time_us = number().or(self.known.out_time_us);
            }
            // ffmpeg before 4.1 prints only this one, in microseconds despite its name.
            "out_time_ms" if !self.reads_out_time_us => {
                self.known.out_time_us = number().or(self.known.out_time_us);
            }
            "progress" if value == "continue" || value == "end" => {
                self.known.end = value == "end";
                return Some(self.known);
            }
            _ => {}
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two blocks as ffmpeg 5.1 prints them for an audio-only output.
    const TWO_BLOCKS: &str = "bitrate=N/A\ntotal_size=8367\nout_time_us=0\nout_time_ms=0\n\
                              out_time=00:00:00.000000\ndup_frames=0\ndrop_frames=0\nspeed=   0x\n\
                              progress=continue\nbitrate=  50.2kbits/s\ntotal_size=3767891\n\
                              out_time_us=600003625\nout_time_ms=600003625\n\
                              out_time=00:10:00.003625\ndup_frames=0\ndrop_frames=0\n\
                              speed= 872x\nprogress=end\n";

    // Guards block reading: a block counts when its `progress=` line ends, a chunk that completes
    // two gives the last, and bytes split anywhere (here one at a time) give the same blocks.
    #[test]
    fn progress_blocks_are_read_whole_however_the_pipe_splits_them() {
        let first = FfmpegProgress {
            total_size: Some(8367),
            out_time_us: Some(0),
            end: false,
        };
        let last = FfmpegProgress {
            total_size: Some(3_767_891),
            out_time_us: Some(600_003_625),
            end: true,
        };
        assert_eq!(
            ProgressParser::default().feed(TWO_BLOCKS.as_bytes()),
            Some(last)
        );

        let mut parser = ProgressParser::default();
        let mut blocks = Vec::new();
        for byte in TWO_BLOCKS.as_bytes() {
            blocks.extend(parser.feed(std::slice::from_ref(byte)));
        }
        assert_eq!(blocks, [first, last]);

        let mut parser = ProgressParser::default();
        assert_eq!(parser.feed(b"total_si"), None);
        assert_eq!(
            parser.feed(b"ze=100\nprogress=cont"),
            None,
            "the block is not over"
        );
        assert_eq!(parser.feed(b"inue").map(|block| block.total_size), None);
        assert_eq!(
            parser.feed(b"\r\n").map(|block| block.total_size),
            Some(Some(100)),
            "a CRLF line ending is a line ending"
        );
    }

    // Guards against garbage: lines that are not `key=value`, unknown keys, values that are not
    // numbers (`N/A` included) and unknown `progress=` values change nothing and end no block.
    #[test]
    fn garbage_in_the_progress_report_is_ignored() {
        let mut parser = ProgressParser::default();
        parser.feed(b"total_size=100\nout_time_us=5\nprogress=continue\n");
        let garbage: &[u8] = b"garbage\n\xff\xfe=\x00\n=\n\ntotal_size=abc\ntotal_size=N/A\n\
                               total_size=-3\nout_time_us=\nfps=12\nprogress=maybe\n";
        assert_eq!(parser.feed(garbage), None);
        assert_eq!(
            parser.feed(b"progress=continue\n"),
            Some(FfmpegProgress {
                total_size: Some(100),
                out_time_us: Some(5),
                end: false,
            })
        );
        // Without `out_time_us`, as ffmpeg before 4.1 prints it.
        let mut old = ProgressParser::default();
        let block = old.feed(b"out_time_ms=2000000\nprogress=end\n").unwrap();
        assert_eq!(block.out_time_us, Some(2_000_000));
        assert!(block.end);
    }

    // Guards the memory bound: an endless line keeps at most the limit in memory, and an overlong
    // line is dropped whole; the value at its start is never read from a cut.
    #[test]
    fn overlong_progress_lines_are_bounded_and_dropped_whole() {
        let mut parser = ProgressParser::default();
        parser.feed(b"total_size=5\nprogress=continue\n");
        parser.feed(b"total_size=9");
        for _ in 0..1000 {
            assert_eq!(parser.feed(&[b' '; 4096]), None);
            assert!(parser.line.len() <= PROGRESS_LINE_BYTES_MAX);
        }
        let block = parser.feed(b"\nprogress=continue\n").unwrap();
        assert_eq!(block.total_size, Some(5), "the overlong line was not read");
        let next = parser.feed(b"total_size=7\nprogress=end\n").unwrap();
        assert_eq!(next.total_size, Some(7), "lines after it are read again");

        let mut parser = ProgressParser::default();
        let just_fits = format!(
            "total_size={:0>width$}\nprogress=end\n",
            42,
            width = PROGRESS_LINE_BYTES_MAX - "total_size=".len()
        );
        assert_eq!(
            parser.feed(just_fits.as_bytes()).unwrap().total_size,
            Some(42)
        );
    }
}
