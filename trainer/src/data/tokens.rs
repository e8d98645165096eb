//! Token-id shards: records tokenised once, by `janus data shard --tokenizer`, exactly
//! as training tokenises them on the fly (the joint text, cut at the response by
//! offsets), stored as ids with their loss boundary.
//!
//! A block (one zstd frame) is a run of samples, little-endian, ids `id_bytes` wide
//! (2 when the vocabulary fits in 16 bits, else 4):
//! - SFT: `u32 prompt_len, u32 response_len, ids[prompt_len + response_len]`;
//! - preference: the chosen sequence, then the rejected one (each as an SFT sample),
//!   then the margin as `f64`.
//!
//! The prompt starts with BOS and takes no loss; the response takes loss and has no EOS
//! yet: the run appends it (or not, for a reward model) and applies its own length
//! policy, so one set of shards serves any `max_seq_len`. The loss mask of a sequence
//! is therefore `[0; prompt_len] ++ [1; response_len]`, stored as its boundary.
//!
//! `lengths.u32` beside the shards holds every sample's `(prompt_len, response_len)`
//! pairs (two per preference sample) in index order: a reader knows every sequence's
//! length, hence how packing will fill rows and how many steps a run takes, before it
//! fetches a block.

use super::records::RecordKind;

/// One tokenised prompt + response: `prompt` starts with BOS, `response` has no EOS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenSeq {
    pub prompt: Vec<i64>,
    pub response: Vec<i64>,
}

/// A tokenised preference pair.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenPair {
    pub chosen: TokenSeq,
    pub rejected: TokenSeq,
    pub margin: f64,
}

/// Bytes per id for a vocabulary of `vocab` tokens.
pub fn id_bytes_for(vocab: usize) -> u32 {
    if vocab <= 1 << 16 {
        2
    } else {
        4
    }
}

fn put_seq(out: &mut Vec<u8>, s: &TokenSeq, id_bytes: u32) {
    out.extend_from_slice(&(s.prompt.len() as u32).to_le_bytes());
    out.extend_from_slice(&(s.response.len() as u32).to_le_bytes());
    for &id in s.prompt.iter().chain(&s.response) {
        if id_bytes == 2 {
            out.extend_from_slice(&(id as u16).to_le_bytes());
        } else {
            out.extend_from_slice(&(id as u32).to_le_bytes());
        }
    }
}

/// Append an SFT sample's bytes.
pub fn put_sft(out: &mut Vec<u8>, s: &TokenSeq, id_bytes: u32) {
    put_seq(out, s, id_bytes);
}

/// Append a preference sample's bytes.
pub fn put_pair(out: &mut Vec<u8>, p: &TokenPair, id_bytes: u32) {
    put_seq(out, &p.chosen, id_bytes);
    put_seq(out, &p.rejected, id_bytes);
    out.extend_from_slice(&p.margin.to_le_bytes());
}

fn u32_at(b: &[u8], at: usize) -> Result<u32, String> {
    b.get(at..at + 4)
        .map(|s| u32::from_le_bytes(s.try_into().expect("4 bytes")))
        .ok_or_else(|| format!("truncated sample (no length at byte {at})"))
}

/// Bytes of the sequence starting at `at`.
fn seq_len(b: &[u8], at: usize, id_bytes: u32) -> Result<usize, String> {
    let n = u32_at(b, at)? as usize + u32_at(b, at + 4)? as usize;
    let end = at + 8 + n * id_bytes as usize;
    if end > b.len() {
        return Err(format!(
            "truncated sample ({n} ids announced at byte {at}, {} bytes left)",
            b.len() - at - 8
        ));
    }
    Ok(end - at)
}

/// Byte ranges of the samples of a decompressed block.
pub fn split_samples(
    b: &[u8],
    kind: RecordKind,
    id_bytes: u32,
) -> Result<Vec<std::ops::Range<usize>>, String> {
    let mut out = Vec::new();
    let mut at = 0;
    while at < b.len() {
        let mut end = at + seq_len(b, at, id_bytes)?;
        if kind == RecordKind::Preference {
            end += seq_len(b, end, id_bytes)? + 8;
            if end > b.len() {
                return Err(format!("truncated sample (no margin at byte {})", end - 8));
            }
        }
        out.push(at..end);
        at = end;
    }
    Ok(out)
}

/// One sequence of a token shard as read: its ids still in the decoded block's bytes
/// (a slice of it, not a copy). Ids are widened to `i64` only when a batch is built
/// from them, so the stream itself never writes 4x the bytes it read.
#[derive(Debug, Clone)]
pub struct SeqIds {
    /// `prompt_len + response_len` ids, `id_bytes` each, little-endian.
    ids: bytes::Bytes,
    id_bytes: u32,
    prompt_len: usize,
}

impl SeqIds {
    pub fn prompt_len(&self) -> usize {
        self.prompt_len
    }

    pub fn response_len(&self) -> usize {
        self.len() - self.prompt_len
    }

    pub fn len(&self) -> usize {
        self.ids.len() / self.id_bytes as usize
    }

    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// Every id, prompt then response.
    pub fn ids(&self) -> impl Iterator<Item = i64> + '_ {
        let w = self.id_bytes as usize;
        self.ids.chunks_exact(w).map(move |c| {
            if w == 2 {
                u16::from_le_bytes([c[0], c[1]]) as i64
            } else {
                u32::from_le_bytes([c[0], c[1], c[2], c[3]]) as i64
            }
        })
    }

    /// The largest id (what a vocabulary check needs), in one pass over the bytes.
    pub fn max_id(&self) -> Option<i64> {
        if self.id_bytes == 2 {
            self.ids
                .chunks_exact(2)
                .map(|c| u16::from_le_bytes([c[0], c[1]]))
                .max()
                .map(i64::from)
        } else {
            self.ids
                .chunks_exact(4)
                .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .max()
                .map(i64::from)
        }
    }

    /// The ids as the prompt and response vectors a batch is built from.
    pub fn widen(&self) -> TokenSeq {
        let mut prompt: Vec<i64> = self.ids().collect();
        let response = prompt.split_off(self.prompt_len);
        TokenSeq { prompt, response }
    }
}

/// A preference sample of a token shard as read (see `SeqIds`).
#[derive(Debug, Clone)]
pub struct PairIds {
    pub chosen: SeqIds,
    pub rejected: SeqIds,
    pub margin: f64,
}

impl PairIds {
    pub fn widen(&self) -> TokenPair {
        TokenPair {
            chosen: self.chosen.widen(),
            rejected: self.rejected.widen(),
            margin: self.margin,
        }
    }
}

/// The sequence at `at`, its ids checked against the shards' vocabulary (an id past
/// it would index past the embedding).
fn read_seq(
    b: &bytes::Bytes,
    at: usize,
    id_bytes: u32,
    vocab: u64,
) -> Result<(SeqIds, usize), String> {
    let len = seq_len(b, at, id_bytes)?;
    let prompt_len = u32_at(b, at)? as usize;
    let seq = SeqIds {
        ids: b.slice(at + 8..at + len),
        id_bytes,
        prompt_len,
    };
    match seq.max_id().filter(|&id| id as u64 >= vocab) {
        Some(id) => Err(format!(
            "token id {id} is outside the shards' vocabulary of {vocab} ids"
        )),
        None => Ok((seq, at + len)),
    }
}

/// Parse one SFT sample (the bytes `split_samples` delimited) of shards of a
/// `vocab`-id tokenizer.
pub fn parse_sft(b: &bytes::Bytes, id_bytes: u32, vocab: u64) -> Result<SeqIds, String> {
    Ok(read_seq(b, 0, id_bytes, vocab)?.0)
}

/// Parse one preference sample.
pub fn parse_pair(b: &bytes::Bytes, id_bytes: u32, vocab: u64) -> Result<PairIds, String> {
    let (chosen, at) = read_seq(b, 0, id_bytes, vocab)?;
    let (rejected, at) = read_seq(b, at, id_bytes, vocab)?;
    let m = b
        .get(at..at + 8)
        .ok_or_else(|| "truncated sample (no margin)".to_string())?;
    Ok(PairIds {
        chosen,
        rejected,
        margin: f64::from_le_bytes(m.try_into().expect("8 bytes")),
    })
}

/// `u32`s per sample in `lengths.u32`.
pub fn lengths_per_sample(kind: RecordKind) -> usize {
    match kind {
        RecordKind::Preference => 4,
        _ => 2,
    }
}

/// Rows of greedy packing over the samples of consecutive windows: for each row, the
/// index (in the rank's stream of the epoch) one past its last record. `fitted(i)`
/// is the number of tokens sample `i` has after the run's length policy, or `None`
/// when the policy drops it. A row never spans two windows, and a dropped record
/// belongs to the row being filled (records before a window's first row belong to
/// it), so greedy packing restarted at any row boundary rebuilds the same rows.
pub fn pack_rows(
    windows: &[usize],
    mut fitted: impl FnMut(usize) -> Option<usize>,
    capacity: usize,
) -> Vec<u64> {
    let mut ends = Vec::new();
    let mut start = 0usize;
    for &n in windows {
        let mut used: Option<usize> = None;
        for i in start..start + n {
            let Some(len) = fitted(i) else { continue };
            // A row's capacity counts input tokens (each example gives len - 1).
            let len = len.saturating_sub(1);
            match used {
                Some(u) if u.saturating_add(len) <= capacity => used = Some(u + len),
                Some(_) => {
                    ends.push(i as u64);
                    used = Some(len);
                }
                None => used = Some(len),
            }
        }
        start += n;
        if used.is_some() {
            ends.push(start as u64);
        }
    }
    ends
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_round_trip_in_both_widths() {
        let seq = |p: &[i64], r: &[i64]| TokenSeq {
            prompt: p.to_vec(),
            response: r.to_vec(),
        };
        for w in [2, 4] {
            let mut b = Vec::new();
            let a = seq(&[1, 500, 7], &[9, 65535]);
            put_sft(&mut b, &a, w);
            put_sft(&mut b, &seq(&[1], &[]), w);
            let b = bytes::Bytes::from(b);
            let r = split_samples(&b, RecordKind::Sft, w).unwrap();
            assert_eq!(r.len(), 2);
            let got = parse_sft(&b.slice(r[0].clone()), w, 1 << 16).unwrap();
            assert_eq!(got.widen(), a);
            assert_eq!((got.prompt_len(), got.response_len()), (3, 2));
            assert_eq!(got.max_id(), Some(65535));
            let e = parse_sft(&b.slice(r[0].clone()), w, 65535).unwrap_err();
            assert!(e.contains("token id 65535 is outside"), "{e}");
            let last = parse_sft(&b.slice(r[1].clone()), w, 2).unwrap().widen();
            assert!(last.response.is_empty());
            let p = TokenPair {
                chosen: a.clone(),
                rejected: seq(&[1, 2], &[3]),
                margin: 0.5,
            };
            let mut b = Vec::new();
            put_pair(&mut b, &p, w);
            put_pair(&mut b, &p, w);
            let b = bytes::Bytes::from(b);
            let r = split_samples(&b, RecordKind::Preference, w).unwrap();
            assert_eq!(r.len(), 2);
            assert_eq!(
                parse_pair(&b.slice(r[1].clone()), w, 1 << 16)
                    .unwrap()
                    .widen(),
                p
            );
            assert!(parse_pair(&b.slice(r[1].clone()), w, 600).is_err());
            assert!(split_samples(&b[..b.len() - 3], RecordKind::Preference, w).is_err());
        }
    }

    #[test]
    fn packing_rows_close_at_capacity_and_window_ends() {
        // Inputs per example are len - 1: 3, 3, 3 | 5, dropped, 1.
        let lens = [Some(4), Some(4), Some(4), Some(6), None, Some(2)];
        let ends = pack_rows(&[3, 3], |i| lens[i], 6);
        assert_eq!(ends, vec![2, 3, 6]);
        // A window of only dropped records joins the next row.
        let ends = pack_rows(&[1, 2], |i| [None, Some(3), Some(3)][i], 8);
        assert_eq!(ends, vec![3]);
    }
}
