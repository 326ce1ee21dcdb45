//! Tags and invalidation markers: what a tag may be, how a tagged entry is
//! stored, and the markers that invalidate many entries at once.
//!
//! A *tag* groups entries ("user:42", "product:7", "prices"); an entry may
//! carry up to [`MAX_TAGS`]. A *marker* says "everything carrying this tag
//! (or, with [`Scope::All`], everything in the namespace) written before
//! this instant is removed" ([`MarkKind::Remove`]) or "is stale"
//! ([`MarkKind::Expire`]). Invalidating a tag is one marker, whatever the
//! number of entries it covers: entries are judged against the markers when
//! they are read, never looked up and deleted one by one.
//!
//! ## Stored layout
//!
//! - An **untagged entry** is the serializer's bytes, unchanged (plain JSON
//!   for the `json` serializer, as the original package reads it).
//! - A **tagged entry** is an envelope around those bytes: `0xC0`, the
//!   layout version `1`, the write stamp (microseconds since the Unix epoch,
//!   8 bytes big-endian), the number of tags (1 byte), each tag as its
//!   length (1 byte) and its UTF-8 bytes, then the serializer's bytes.
//!   `0xC0` begins no JSON text (it is not UTF-8) and no header of the binary
//!   serializers (`0xC1`), so a reader tells the layouts apart by the first byte.
//!   After a namespace-wide marker, untagged entries are written in this
//!   layout too (with no tag) for one marker lifetime, so that they can be
//!   told apart from the entries the marker covers.
//! - **Markers** live in one Redis hash per namespace, `rc:marks:{<namespace>}`:
//!   field `r:<tag>` (removed) or `e:<tag>` (expired), `r*` or `e*` for the
//!   whole namespace; value: the stamp of the latest such invalidation, in
//!   decimal. The hash expires one marker lifetime after its latest marker.

use crate::error::{Error, Result};

/// The shortest marker lifetime: a cache keeps its markers for this long,
/// or for the longest an entry written with its TTLs lives, if longer.
pub const MIN_MARKER_LIFETIME: std::time::Duration = std::time::Duration::from_secs(24 * 3600);

/// Most tags one entry may carry.
pub const MAX_TAGS: usize = 32;
/// Longest tag, in bytes.
pub const MAX_TAG_BYTES: usize = 128;

/// A tag is 1 to [`MAX_TAG_BYTES`] bytes without control characters.
pub fn validate_tag(tag: &str) -> Result<()> {
    if tag.is_empty() || tag.len() > MAX_TAG_BYTES || tag.chars().any(char::is_control) {
        return Err(Error::InvalidInput(format!(
            "tag {tag:?} is not allowed: 1 to {MAX_TAG_BYTES} bytes without control characters"
        )));
    }
    Ok(())
}

/// The tags of one write, checked ([`validate_tag`], at most [`MAX_TAGS`]),
/// sorted and without duplicates.
pub(crate) fn check_tags<S: AsRef<str>>(tags: &[S]) -> Result<Vec<String>> {
    let mut out: Vec<String> = Vec::with_capacity(tags.len());
    for t in tags {
        validate_tag(t.as_ref())?;
        out.push(t.as_ref().to_string());
    }
    out.sort_unstable();
    out.dedup();
    if out.len() > MAX_TAGS {
        return Err(Error::InvalidInput(format!(
            "{} tags given: an entry carries at most {MAX_TAGS}",
            out.len()
        )));
    }
    Ok(out)
}

/// What a marker does to the entries it covers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MarkKind {
    /// They read as absent.
    Remove,
    /// They read as stale: a miss for `get`, a reload for `get_or_load`, a
    /// fail-safe fallback if the reload fails.
    Expire,
}

impl MarkKind {
    /// Its place in a `[removal, expiry]` pair of stamps.
    pub(crate) fn slot(self) -> usize {
        match self {
            MarkKind::Remove => 0,
            MarkKind::Expire => 1,
        }
    }
}

/// Which entries a marker covers.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Scope {
    /// Those carrying this tag.
    Tag(String),
    /// Every entry of the namespace.
    All,
}

/// One invalidation: entries in `scope` written at or before `at_us` are
/// removed or expired.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mark {
    /// Which entries.
    pub scope: Scope,
    /// Removed or stale.
    pub kind: MarkKind,
    /// Its stamp: microseconds since the Unix epoch.
    pub at_us: u64,
}

impl Mark {
    /// Its field in the namespace's marker hash (see the module docs).
    pub fn field(&self) -> String {
        let k = match self.kind {
            MarkKind::Remove => 'r',
            MarkKind::Expire => 'e',
        };
        match &self.scope {
            Scope::Tag(t) => format!("{k}:{t}"),
            Scope::All => format!("{k}*"),
        }
    }

    /// The marker a hash field and its stamp stand for; `None` for a field
    /// this version does not know.
    pub fn from_field(field: &str, at_us: u64) -> Option<Self> {
        let (kind, rest) = match field.split_at_checked(1)? {
            ("r", rest) => (MarkKind::Remove, rest),
            ("e", rest) => (MarkKind::Expire, rest),
            _ => return None,
        };
        let scope = match rest {
            "*" => Scope::All,
            _ => Scope::Tag(rest.strip_prefix(':')?.to_string()),
        };
        Some(Self { scope, kind, at_us })
    }
}

/// What a stored entry is, given the markers that may cover it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EntryState {
    /// No marker covers it.
    Live,
    /// An expiry marker covers it: stale (a fail-safe fallback only).
    Stale,
    /// A removal marker covers it: absent.
    Removed,
}

/// What an entry stored as `bytes` is, given the namespace's `marks` (as
/// [`Mark::from_field`] reads them from L2) and the marker lifetime (how
/// long a namespace-wide marker covers entries of the untagged layout, which
/// carry no stamp). This is the rule the cache applies on every L2 read;
/// the cache keeps its markers in a table built for that, and tools use this.
pub fn entry_state(marks: &[Mark], bytes: &[u8], lifetime: std::time::Duration) -> Result<EntryState> {
    let (written, tags) = match open(bytes)? {
        Some(e) => (Some(e.written_us), e.tags),
        None => (None, Vec::new()),
    };
    let mut covering = [0u64; 2];
    for m in marks {
        let covers = match &m.scope {
            Scope::All => true,
            Scope::Tag(t) => tags.contains(&t.as_str()),
        };
        if covers {
            let slot = &mut covering[m.kind.slot()];
            *slot = (*slot).max(m.at_us);
        }
    }
    Ok(judge(written, covering, lifetime))
}

/// The rule itself, shared by [`entry_state`] and the cache's marker table:
/// an entry written at `written_us` (`None`: the untagged layout, which
/// carries no stamp and which only namespace-wide markers cover), given the
/// latest `[removal, expiry]` stamps of the markers covering it (0: none).
/// A stamped entry is covered by a marker set at or after its write; an
/// unstamped one by a marker still within its `lifetime` (writes made while
/// one is alive carry their stamp). No clock is read unless a marker covers
/// an unstamped entry.
pub(crate) fn judge(
    written_us: Option<u64>,
    covering: [u64; 2],
    lifetime: std::time::Duration,
) -> EntryState {
    let covered = |at: u64| match written_us {
        Some(w) => at >= w,
        None => at != 0 && at > crate::clock::wall_us().saturating_sub(lifetime.as_micros() as u64),
    };
    if covered(covering[MarkKind::Remove.slot()]) {
        EntryState::Removed
    } else if covered(covering[MarkKind::Expire.slot()]) {
        EntryState::Stale
    } else {
        EntryState::Live
    }
}

/// First byte of a tagged entry.
pub const ENVELOPE: u8 = 0xC0;
const ENVELOPE_VERSION: u8 = 1;

/// A tagged entry, read from its stored bytes ([`open`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaggedEntry<'a> {
    /// When it was written (or, for a loaded value, when its load began):
    /// microseconds since the Unix epoch.
    pub written_us: u64,
    /// Its tags (none for an untagged entry written after a namespace-wide marker).
    pub tags: Vec<&'a str>,
    /// The value's bytes, as the serializer wrote them.
    pub body: &'a [u8],
}

/// `body` in a tagged entry's layout.
pub(crate) fn wrap(written_us: u64, tags: &[String], body: &[u8]) -> Vec<u8> {
    let head = 11 + tags.iter().map(|t| 1 + t.len()).sum::<usize>();
    let mut out = Vec::with_capacity(head + body.len());
    out.push(ENVELOPE);
    out.push(ENVELOPE_VERSION);
    out.extend_from_slice(&written_us.to_be_bytes());
    out.push(tags.len() as u8);
    for t in tags {
        out.push(t.len() as u8);
        out.extend_from_slice(t.as_bytes());
    }
    out.extend_from_slice(body);
    out
}

/// The tagged entry stored as `bytes`; `Ok(None)` when they are an untagged
/// entry (any other first byte), `Err` when they begin like a tagged entry
/// but are not a whole, valid one.
pub fn open(bytes: &[u8]) -> Result<Option<TaggedEntry<'_>>> {
    let bad = |what: &str| Error::Serialization(format!("tagged entry: {what}"));
    let Some((&ENVELOPE, rest)) = bytes.split_first() else {
        return Ok(None);
    };
    let (&version, rest) = rest.split_first().ok_or_else(|| bad("no layout version"))?;
    if version != ENVELOPE_VERSION {
        return Err(bad(&format!(
            "layout version {version} is not known (this version reads {ENVELOPE_VERSION})"
        )));
    }
    let (stamp, rest) = rest.split_at_checked(8).ok_or_else(|| bad("truncated stamp"))?;
    let written_us = u64::from_be_bytes(stamp.try_into().map_err(|_| bad("truncated stamp"))?);
    let (&count, mut rest) = rest.split_first().ok_or_else(|| bad("no tag count"))?;
    let mut tags = Vec::with_capacity(count as usize);
    for _ in 0..count {
        let (&len, tail) = rest.split_first().ok_or_else(|| bad("truncated tag"))?;
        let (tag, tail) = tail
            .split_at_checked(len as usize)
            .ok_or_else(|| bad("truncated tag"))?;
        tags.push(std::str::from_utf8(tag).map_err(|_| bad("a tag is not UTF-8"))?);
        rest = tail;
    }
    Ok(Some(TaggedEntry {
        written_us,
        tags,
        body: rest,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelope_round_trips_and_plain_bytes_stay_plain() {
        let tags = check_tags(&["b", "a", "b"]).unwrap();
        assert_eq!(tags, ["a", "b"], "sorted, deduplicated");
        let bytes = wrap(1_700_000_000_000_000, &tags, br#"{"x":1}"#);
        let e = open(&bytes).unwrap().unwrap();
        assert_eq!(e.written_us, 1_700_000_000_000_000);
        assert_eq!(e.tags, ["a", "b"]);
        assert_eq!(e.body, br#"{"x":1}"#);
        assert_eq!(open(br#"{"x":1}"#).unwrap(), None);
        assert_eq!(
            open(&[0xC1, 1, 1]).unwrap(),
            None,
            "the binary serializers' header"
        );
        assert_eq!(open(b"").unwrap(), None);
    }

    #[test]
    fn damaged_envelopes_are_errors() {
        let bytes = wrap(7, &["tag".to_string()], b"v");
        for cut in 1..13 {
            assert!(open(&bytes[..cut]).is_err(), "cut at {cut}");
        }
        let mut v2 = bytes.clone();
        v2[1] = 2;
        assert!(open(&v2).unwrap_err().to_string().contains("version 2"));
        let mut not_utf8 = bytes;
        not_utf8[12] = 0xFF;
        assert!(open(&not_utf8).is_err());
    }

    #[test]
    fn tags_are_checked() {
        assert!(validate_tag("user:42").is_ok());
        assert!(validate_tag("price list").is_ok());
        for bad in ["", "a\nb", "nul\0", &"x".repeat(MAX_TAG_BYTES + 1)] {
            let e = validate_tag(bad).unwrap_err().to_string();
            assert!(e.contains("control characters"), "{e}");
        }
        let many: Vec<String> = (0..=MAX_TAGS).map(|i| i.to_string()).collect();
        assert!(check_tags(&many).unwrap_err().to_string().contains("at most 32"));
    }

    #[test]
    fn entry_state_applies_the_markers() {
        let day = std::time::Duration::from_secs(86_400);
        let now = crate::clock::stamp_us();
        let tagged = wrap(now - 10, &["a".to_string()], b"1");
        let m = |scope, kind, at_us| Mark { scope, kind, at_us };
        let tag = |t: &str| Scope::Tag(t.into());
        assert_eq!(entry_state(&[], &tagged, day).unwrap(), EntryState::Live);
        let expired = [m(tag("a"), MarkKind::Expire, now)];
        assert_eq!(entry_state(&expired, &tagged, day).unwrap(), EntryState::Stale);
        let removed = [
            m(tag("a"), MarkKind::Expire, now),
            m(tag("a"), MarkKind::Remove, now),
        ];
        assert_eq!(entry_state(&removed, &tagged, day).unwrap(), EntryState::Removed);
        let before = [m(tag("a"), MarkKind::Remove, now - 20)];
        assert_eq!(
            entry_state(&before, &tagged, day).unwrap(),
            EntryState::Live,
            "marker older than the entry"
        );
        let other = [m(tag("b"), MarkKind::Remove, now)];
        assert_eq!(entry_state(&other, &tagged, day).unwrap(), EntryState::Live);
        let all = [m(Scope::All, MarkKind::Remove, now)];
        assert_eq!(entry_state(&all, &tagged, day).unwrap(), EntryState::Removed);
        assert_eq!(
            entry_state(&all, b"1", day).unwrap(),
            EntryState::Removed,
            "plain layout, marker alive"
        );
        let old_all = [m(Scope::All, MarkKind::Remove, now - 2 * 86_400_000_000)];
        assert_eq!(
            entry_state(&old_all, b"1", day).unwrap(),
            EntryState::Live,
            "marker past its lifetime"
        );
        assert_eq!(
            entry_state(&other, b"1", day).unwrap(),
            EntryState::Live,
            "a tag never covers plain entries"
        );
    }

    #[test]
    fn marker_fields_round_trip() {
        for mark in [
            Mark {
                scope: Scope::Tag("user:42".into()),
                kind: MarkKind::Remove,
                at_us: 5,
            },
            Mark {
                scope: Scope::Tag("*".into()),
                kind: MarkKind::Expire,
                at_us: 6,
            },
            Mark {
                scope: Scope::All,
                kind: MarkKind::Remove,
                at_us: 7,
            },
            Mark {
                scope: Scope::All,
                kind: MarkKind::Expire,
                at_us: 8,
            },
        ] {
            assert_eq!(Mark::from_field(&mark.field(), mark.at_us), Some(mark.clone()));
        }
        assert_eq!(Mark::from_field("x:y", 1), None);
        assert_eq!(Mark::from_field("ry", 1), None);
        assert_eq!(Mark::from_field("", 1), None);
    }
}
