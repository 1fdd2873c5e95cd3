//! Mentions and unread mention counts (`docs/design.md` §4.1).
//!
//! `record_message_with` writes, in the message's own batch, one key per
//! mentioned member and one per "@everyone" message, in the `mentions`
//! column family:
//!
//! ```text
//! direct:   | 0x01 | user (u64 BE) | conversation (u64 BE) | message (u64 BE) |  -> empty
//! everyone: | 0x02 | conversation (u64 BE) | message (u64 BE) |                 -> sender (u64 BE)
//! ```
//!
//! A member's unread mentions in a conversation are the keys after their
//! read position `P` (the same `P` as the unread count: their mark or the
//! newest message when they joined, whichever is later): one seek in their
//! direct keys and one in the conversation's "@everyone" keys, then only
//! the unread mentions are visited, each checked against the `deletions`
//! index (a deleted message, or one of an uncounted kind, mentions nobody).
//! Nothing else is scanned, so every conversation of a user is counted at
//! login at the price of two seeks each.

use byteorder::{BigEndian, ByteOrder};
use rocksdb::WriteBatch;

use super::{Cf, Store, View};
use crate::error::{Error, Result, storage};
use crate::ids::{ConversationId, MessageId, UserId};
use crate::pure::keys;

/// Tag of a direct mention key.
pub(crate) const TAG_DIRECT: u8 = 0x01;
/// Tag of an "@everyone" key.
pub(crate) const TAG_EVERYONE: u8 = 0x02;
/// Length of a direct mention key.
pub(crate) const DIRECT_KEY_LEN: usize = 1 + 3 * keys::ID_LEN;
/// Length of an "@everyone" key.
pub(crate) const EVERYONE_KEY_LEN: usize = 1 + 2 * keys::ID_LEN;
/// Distinct members one message may mention by name (more is refused,
/// typed): every mention is a write on the send path.
///
/// # Examples
///
/// ```
/// # use readmark::{Config, ConversationId, MessageId, Store, Timestamp, UserId};
/// # let dir = tempfile::tempdir()?;
/// # let store = Store::open(dir.path(), Config::new())?;
/// # let (c, alice, bob) = (ConversationId(1), UserId(1), UserId(2));
/// # store.create_conversation(c)?;
/// # store.add_member(c, alice, Timestamp(0))?;
/// # store.add_member(c, bob, Timestamp(0))?;
/// # use readmark::{Error, MessageOptions, MAX_MENTIONS};
/// let everyone = (0..=MAX_MENTIONS as u64).map(UserId);
/// let refused = store.record_message_with(c, MessageId(1), alice, Timestamp(1), &MessageOptions::new().mention(everyone));
/// assert!(matches!(refused, Err(Error::InvalidArgument(_))));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub const MAX_MENTIONS: usize = 1024;

pub(crate) fn direct_key(
    user: UserId,
    conversation: ConversationId,
    message: MessageId,
) -> [u8; DIRECT_KEY_LEN] {
    let mut k = [0u8; DIRECT_KEY_LEN];
    k[0] = TAG_DIRECT;
    BigEndian::write_u64(&mut k[1..9], user.0);
    BigEndian::write_u64(&mut k[9..17], conversation.0);
    BigEndian::write_u64(&mut k[17..25], message.0);
    k
}

pub(crate) fn everyone_key(
    conversation: ConversationId,
    message: MessageId,
) -> [u8; EVERYONE_KEY_LEN] {
    let mut k = [0u8; EVERYONE_KEY_LEN];
    k[0] = TAG_EVERYONE;
    BigEndian::write_u64(&mut k[1..9], conversation.0);
    BigEndian::write_u64(&mut k[9..17], message.0);
    k
}

/// The message id at the end of a mention key of either kind, if the key
/// has one of the two layouts.
pub(crate) fn decode_message(key: &[u8]) -> Option<(ConversationId, MessageId)> {
    match (key.first(), key.len()) {
        (Some(&TAG_DIRECT), DIRECT_KEY_LEN) => Some((
            ConversationId(BigEndian::read_u64(&key[9..17])),
            MessageId(BigEndian::read_u64(&key[17..25])),
        )),
        (Some(&TAG_EVERYONE), EVERYONE_KEY_LEN) => Some((
            ConversationId(BigEndian::read_u64(&key[1..9])),
            MessageId(BigEndian::read_u64(&key[9..17])),
        )),
        _ => None,
    }
}

/// The first key after every key that starts with `prefix` (which does not
/// end the key space: its first byte is a tag below 0xFF).
fn successor(prefix: &[u8]) -> Vec<u8> {
    let mut s = prefix.to_vec();
    while let Some(&0xFF) = s.last() {
        s.pop();
    }
    if let Some(last) = s.last_mut() {
        *last += 1;
    }
    s
}

/// The mentions a message records: named members (without duplicates or
/// the sender, who does not mention themself), or, if it mentions
/// everyone, that alone (it names every member but the sender already,
/// and a message is one mention however it names you).
pub(crate) fn write_mentions(
    store: &Store,
    batch: &mut WriteBatch,
    conversation: ConversationId,
    message: MessageId,
    sender: UserId,
    named: &[UserId],
    everyone: bool,
) {
    let cf = store.cf(Cf::Mentions);
    if !everyone {
        for &user in named {
            if user != sender {
                batch.put_cf(cf, direct_key(user, conversation, message), []);
            }
        }
    } else {
        batch.put_cf(
            cf,
            everyone_key(conversation, message),
            sender.0.to_be_bytes(),
        );
    }
}

/// Checks and normalises the named mentions of a message.
pub(crate) fn normalise(named: &[UserId]) -> Result<Vec<UserId>> {
    let mut v = named.to_vec();
    v.sort_unstable();
    v.dedup();
    if v.len() > MAX_MENTIONS {
        return Err(Error::InvalidArgument(
            "a message mentions at most MAX_MENTIONS (1024) members by name",
        ));
    }
    Ok(v)
}

/// Unread mentions of `user` in `conversation` after `seen` (`None`:
/// nothing seen, every mention counts).
pub(crate) fn unread_mentions(
    view: &View<'_>,
    conversation: ConversationId,
    user: UserId,
    seen: Option<MessageId>,
) -> Result<u64> {
    let from = match seen {
        None => 0,
        Some(p) => match p.0.checked_add(1) {
            Some(f) => f,
            None => return Ok(0),
        },
    };
    let counted = |message: MessageId| -> Result<bool> {
        Ok(view
            .get_raw(Cf::Deletions, &keys::message_key(conversation, message))?
            .is_none())
    };
    let mut n = 0u64;
    // Named.
    let prefix = &direct_key(user, conversation, MessageId(0))[..17];
    let mut it = view.range_iter(
        Cf::Mentions,
        direct_key(user, conversation, MessageId(from)).to_vec(),
        successor(prefix),
    );
    while let Some(k) = it.key() {
        let (_, m) =
            decode_message(k).ok_or_else(|| super::corrupt(Cf::Mentions, k, "bad mention key"))?;
        if counted(m)? {
            n += 1;
        }
        it.next();
    }
    it.status().map_err(storage)?;
    // Everyone, except in one's own messages.
    let prefix = &everyone_key(conversation, MessageId(0))[..9];
    let mut it = view.range_iter(
        Cf::Mentions,
        everyone_key(conversation, MessageId(from)).to_vec(),
        successor(prefix),
    );
    while let (Some(k), Some(v)) = (it.key(), it.value()) {
        let (_, m) =
            decode_message(k).ok_or_else(|| super::corrupt(Cf::Mentions, k, "bad mention key"))?;
        let sender = <[u8; 8]>::try_from(v)
            .map(u64::from_be_bytes)
            .map_err(|_| super::corrupt(Cf::Mentions, k, "bad mention value"))?;
        if sender != user.0 && counted(m)? {
            n += 1;
        }
        it.next();
    }
    it.status().map_err(storage)?;
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn golden_keys_and_their_order() {
        let d = direct_key(UserId(1), ConversationId(2), MessageId(3));
        assert_eq!(d[0], TAG_DIRECT);
        assert_eq!((d[8], d[16], d[24]), (1, 2, 3));
        let e = everyone_key(ConversationId(2), MessageId(3));
        assert_eq!((e[0], e[8], e[16]), (TAG_EVERYONE, 2, 3));
        assert_eq!(decode_message(&d), Some((ConversationId(2), MessageId(3))));
        assert_eq!(decode_message(&e), Some((ConversationId(2), MessageId(3))));
        assert_eq!(decode_message(&d[..24]), None);
        // Every direct key sorts before every everyone key, and a user's
        // keys of one conversation are one range.
        let last_direct = direct_key(
            UserId(u64::MAX),
            ConversationId(u64::MAX),
            MessageId(u64::MAX),
        );
        assert!(last_direct.as_slice() < everyone_key(ConversationId(0), MessageId(0)).as_slice());
        let s = successor(&d[..17]);
        assert!(d.as_slice() < s.as_slice());
        assert!(direct_key(UserId(1), ConversationId(3), MessageId(0)).as_slice() >= s.as_slice());
        let max = direct_key(UserId(1), ConversationId(u64::MAX), MessageId(u64::MAX));
        let s = successor(&max[..17]);
        assert!(max.as_slice() < s.as_slice());
        assert!(direct_key(UserId(2), ConversationId(0), MessageId(0)).as_slice() >= s.as_slice());
    }

    #[test]
    fn too_many_names_are_refused_and_duplicates_dropped() {
        let named: Vec<UserId> = (0..=MAX_MENTIONS as u64).map(UserId).collect();
        assert!(matches!(normalise(&named), Err(Error::InvalidArgument(_))));
        assert_eq!(
            normalise(&[UserId(3), UserId(1), UserId(3)]).unwrap(),
            vec![UserId(1), UserId(3)]
        );
    }
}
