//! A small MP4 (ISO BMFF) writer for one video track of already encoded
//! H.264/H.265 frames: `ftyp`, then `mdat` streamed to the file frame by
//! frame, then `moov`. No decoding, no re-encoding. Browsers, ffprobe and
//! ffmpeg play it (a browser fetches the trailing `moov` with a range
//! request).

use super::buffer::{Frame, StreamParams};
use std::io::{Seek, SeekFrom, Write};
use std::sync::Arc;

/// Why a clip could not be written.
#[derive(Debug, thiserror::Error)]
pub enum Mp4Error {
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error("clip over 4 GiB")]
    TooLarge,
    #[error("no frames")]
    Empty,
}

/// Writes one clip.
pub struct Mp4Writer<W: Write + Seek> {
    w: W,
    params: Arc<StreamParams>,
    /// Offset of the `mdat` box header.
    mdat_start: u64,
    pos: u64,
    sizes: Vec<u32>,
    offsets: Vec<u32>,
    /// Run-length sample durations: (count, ticks).
    durations: Vec<(u32, u32)>,
    /// 1-based numbers of keyframes.
    sync: Vec<u32>,
    last_pts: Option<i64>,
    total: u64,
}

impl<W: Write + Seek> Mp4Writer<W> {
    /// Start a clip whose frames all use `params`.
    pub fn new(mut w: W, params: Arc<StreamParams>) -> Result<Self, Mp4Error> {
        let mut b = Vec::with_capacity(40);
        boxed(&mut b, b"ftyp", |b| {
            b.extend_from_slice(b"isom");
            b.extend_from_slice(&0x200u32.to_be_bytes());
            for brand in [b"isom", b"iso2", b"avc1", b"mp41"] {
                b.extend_from_slice(brand);
            }
        });
        let mdat_start = b.len() as u64;
        b.extend_from_slice(&[0, 0, 0, 0]);
        b.extend_from_slice(b"mdat");
        w.write_all(&b)?;
        Ok(Mp4Writer {
            w,
            params,
            mdat_start,
            pos: mdat_start + 8,
            sizes: Vec::new(),
            offsets: Vec::new(),
            durations: Vec::new(),
            sync: Vec::new(),
            last_pts: None,
            total: 0,
        })
    }

    /// Would this frame fit the clip (same stream parameters)?
    pub fn accepts(&self, f: &Frame) -> bool {
        Arc::ptr_eq(&self.params, &f.params) || *self.params == *f.params
    }

    /// Append a frame (decode order).
    pub fn push(&mut self, f: &Frame) -> Result<(), Mp4Error> {
        let size = u32::try_from(f.data.len()).map_err(|_| Mp4Error::TooLarge)?;
        let offset = u32::try_from(self.pos).map_err(|_| Mp4Error::TooLarge)?;
        if self.pos + u64::from(size) > u64::from(u32::MAX) {
            return Err(Mp4Error::TooLarge);
        }
        self.w.write_all(&f.data)?;
        if let Some(last) = self.last_pts.replace(f.pts) {
            // Without B-frames pts increase; never write a zero duration.
            let d = (f.pts - last).clamp(1, i64::from(u32::MAX)) as u32;
            self.add_duration(d);
        }
        self.sizes.push(size);
        self.offsets.push(offset);
        if f.keyframe {
            self.sync.push(self.sizes.len() as u32);
        }
        self.pos += u64::from(size);
        Ok(())
    }

    fn add_duration(&mut self, d: u32) {
        self.total += u64::from(d);
        match self.durations.last_mut() {
            Some((n, dd)) if *dd == d => *n += 1,
            _ => self.durations.push((1, d)),
        }
    }

    /// Number of frames so far.
    pub fn frames(&self) -> usize {
        self.sizes.len()
    }

    /// Duration so far in 90 kHz units (the last frame counted with the
    /// previous frame's duration).
    pub fn duration(&self) -> u64 {
        self.total + u64::from(self.durations.last().map_or(0, |d| d.1))
    }

    /// Write the index and return the sink and the clip's duration in
    /// 90 kHz units.
    pub fn finish(mut self) -> Result<(W, u64), Mp4Error> {
        if self.sizes.is_empty() {
            return Err(Mp4Error::Empty);
        }
        // The last frame lasts as long as the one before it (or 1/25 s).
        let last = self.durations.last().map_or(3600, |d| d.1);
        self.add_duration(last);
        let moov = self.moov();
        self.w.write_all(&moov)?;
        let mdat_len = u32::try_from(self.pos - self.mdat_start).map_err(|_| Mp4Error::TooLarge)?;
        self.w.seek(SeekFrom::Start(self.mdat_start))?;
        self.w.write_all(&mdat_len.to_be_bytes())?;
        self.w.seek(SeekFrom::End(0))?;
        self.w.flush()?;
        Ok((self.w, self.total))
    }

    fn moov(&self) -> Vec<u8> {
        let n = self.sizes.len();
        let mut b = Vec::with_capacity(1024 + n * 12 + self.durations.len() * 8);
        let dur = u32::try_from(self.total).unwrap_or(u32::MAX);
        let (w, h) = (self.params.width, self.params.height);
        let matrix: [u32; 9] = [0x10000, 0, 0, 0, 0x10000, 0, 0, 0, 0x4000_0000];
        boxed(&mut b, b"moov", |b| {
            boxed(b, b"mvhd", |b| {
                put32(b, 0); // version 0, flags
                put32(b, 0); // creation
                put32(b, 0); // modification
                put32(b, 90_000);
                put32(b, dur);
                put32(b, 0x10000); // rate 1.0
                b.extend_from_slice(&[1, 0, 0, 0]); // volume 1.0, reserved
                b.extend_from_slice(&[0; 8]);
                matrix.iter().for_each(|m| put32(b, *m));
                b.extend_from_slice(&[0; 24]); // pre_defined
                put32(b, 2); // next track id
            });
            boxed(b, b"trak", |b| {
                boxed(b, b"tkhd", |b| {
                    put32(b, 3); // version 0, enabled | in movie
                    put32(b, 0);
                    put32(b, 0);
                    put32(b, 1); // track id
                    put32(b, 0);
                    put32(b, dur);
                    b.extend_from_slice(&[0; 8]);
                    b.extend_from_slice(&[0; 8]); // layer, group, volume, reserved
                    matrix.iter().for_each(|m| put32(b, *m));
                    put32(b, (w.min(0xffff)) << 16);
                    put32(b, (h.min(0xffff)) << 16);
                });
                boxed(b, b"mdia", |b| {
                    boxed(b, b"mdhd", |b| {
                        put32(b, 0);
                        put32(b, 0);
                        put32(b, 0);
                        put32(b, 90_000);
                        put32(b, dur);
                        put32(b, 0x55c4_0000); // und
                    });
                    boxed(b, b"hdlr", |b| {
                        put32(b, 0);
                        put32(b, 0);
                        b.extend_from_slice(b"vide");
                        b.extend_from_slice(&[0; 12]);
                        b.extend_from_slice(b"VideoHandler\0");
                    });
                    boxed(b, b"minf", |b| {
                        boxed(b, b"vmhd", |b| {
                            put32(b, 1);
                            b.extend_from_slice(&[0; 8]);
                        });
                        boxed(b, b"dinf", |b| {
                            boxed(b, b"dref", |b| {
                                put32(b, 0);
                                put32(b, 1);
                                boxed(b, b"url ", |b| put32(b, 1));
                            });
                        });
                        boxed(b, b"stbl", |b| self.stbl(b));
                    });
                });
            });
        });
        b
    }

    fn stbl(&self, b: &mut Vec<u8>) {
        boxed(b, b"stsd", |b| {
            put32(b, 0);
            put32(b, 1);
            b.extend_from_slice(&self.params.sample_entry);
        });
        boxed(b, b"stts", |b| {
            put32(b, 0);
            put32(b, self.durations.len() as u32);
            for (n, d) in &self.durations {
                put32(b, *n);
                put32(b, *d);
            }
        });
        boxed(b, b"stss", |b| {
            put32(b, 0);
            put32(b, self.sync.len() as u32);
            self.sync.iter().for_each(|s| put32(b, *s));
        });
        // One sample per chunk: simple, and a chunk offset per frame.
        boxed(b, b"stsc", |b| {
            put32(b, 0);
            put32(b, 1);
            put32(b, 1);
            put32(b, 1);
            put32(b, 1);
        });
        boxed(b, b"stsz", |b| {
            put32(b, 0);
            put32(b, 0);
            put32(b, self.sizes.len() as u32);
            self.sizes.iter().for_each(|s| put32(b, *s));
        });
        boxed(b, b"stco", |b| {
            put32(b, 0);
            put32(b, self.offsets.len() as u32);
            self.offsets.iter().for_each(|o| put32(b, *o));
        });
    }
}

fn put32(b: &mut Vec<u8>, v: u32) {
    b.extend_from_slice(&v.to_be_bytes());
}

/// Append a box: its size, its type, then what `f` writes.
fn boxed(b: &mut Vec<u8>, kind: &[u8; 4], f: impl FnOnce(&mut Vec<u8>)) {
    let start = b.len();
    b.extend_from_slice(&[0, 0, 0, 0]);
    b.extend_from_slice(kind);
    f(b);
    let len = (b.len() - start) as u32;
    b[start..start + 4].copy_from_slice(&len.to_be_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Walk top-level boxes: (type, size).
    fn boxes(data: &[u8]) -> Vec<(String, usize)> {
        let mut out = Vec::new();
        let mut i = 0;
        while i + 8 <= data.len() {
            let len = u32::from_be_bytes(data[i..i + 4].try_into().unwrap()) as usize;
            out.push((String::from_utf8_lossy(&data[i + 4..i + 8]).into(), len));
            assert!(len >= 8);
            i += len;
        }
        assert_eq!(i, data.len(), "boxes cover the file exactly");
        out
    }

    #[test]
    fn writes_consistent_boxes() {
        let p = Arc::new(StreamParams {
            sample_entry: vec![0, 0, 0, 8, b'a', b'v', b'c', b'1'],
            width: 640,
            height: 480,
            codec: "h264",
            rfc6381: "avc1.42c01e".into(),
        });
        let mut w = Mp4Writer::new(std::io::Cursor::new(Vec::new()), p.clone()).unwrap();
        for i in 0..30i64 {
            let f = Frame {
                pts: i * 3000,
                keyframe: i % 10 == 0,
                data: vec![1; 100 + i as usize],
                params: p.clone(),
                session: 1,
            };
            assert!(w.accepts(&f));
            w.push(&f).unwrap();
        }
        let (cur, dur) = w.finish().unwrap();
        assert_eq!(dur, 30 * 3000, "30 frames of 1/30 s");
        let data = cur.into_inner();
        let b = boxes(&data);
        let kinds: Vec<&str> = b.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(kinds, ["ftyp", "mdat", "moov"]);
        let payload: usize = (0..30).map(|i| 100 + i).sum();
        assert_eq!(b[1].1, 8 + payload);
    }

    #[test]
    fn empty_clip_is_an_error() {
        let p = Arc::new(StreamParams {
            sample_entry: vec![],
            width: 1,
            height: 1,
            codec: "h264",
            rfc6381: String::new(),
        });
        let w = Mp4Writer::new(std::io::Cursor::new(Vec::new()), p).unwrap();
        assert!(matches!(w.finish(), Err(Mp4Error::Empty)));
    }
}
