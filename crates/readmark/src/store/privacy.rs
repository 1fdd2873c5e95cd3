//! Private receipts: a member whose reads nobody else sees.
//!
//! The setting lives in the member record (one bit for "private here", one
//! for a copy of the user's "private everywhere" setting, which is kept in
//! the `users` column family so that new memberships inherit it). Every
//! answer about other people's reads — `read_by`, `read_count`, `marks`,
//! events, catch-up — already reads each member record, so privacy costs
//! those reads nothing, and going private hides everything at once: no
//! receipt is rewritten.
//!
//! While private, a member's advances write their mark only (their own
//! unread counts and devices need it) and no per-message bits or read
//! times, and their single views are not recorded. Going public again
//! therefore reveals the mark — how far they have read, "no later than"
//! the mark's time, which any later read would reveal anyway — but never
//! which messages they opened out of order, or when, while private.

use rocksdb::WriteBatch;

use super::{Cf, Store};
use crate::error::Result;
use crate::ids::{ConversationId, UserId};
use crate::pure::keys;
use crate::pure::records::{decode_user_settings, encode_user_settings};

/// Where a privacy setting applies.
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
/// # use readmark::PrivacyScope;
/// store.set_receipts_private(bob, PrivacyScope::Conversation(c), true)?;
/// assert!(store.receipts_private(bob, PrivacyScope::Conversation(c))?);
/// assert!(!store.receipts_private(bob, PrivacyScope::Everywhere)?);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PrivacyScope {
    /// Every conversation of the user, present and future.
    Everywhere,
    /// One conversation (the user must be a member; the setting ends with
    /// the membership).
    Conversation(ConversationId),
}

impl Store {
    /// Makes `user`'s receipts private (or public again) in `scope`. A
    /// private member still has a read mark — their unread counts and their
    /// own devices' events work as before — but they never appear to anyone
    /// else: not in events, [`read_by`](Store::read_by),
    /// [`read_count`](Store::read_count), [`marks`](Store::marks) or
    /// catch-up. Effective at once, including for reads made before.
    ///
    /// Going public again shows the read mark (how far they have read) but
    /// not the messages they opened out of order or the read times of the
    /// private period: nothing per message is recorded while private.
    /// A member is private if either scope says so.
    ///
    /// # Errors
    ///
    /// [`Error::UnknownConversation`](crate::Error::UnknownConversation),
    /// [`Error::NotMember`](crate::Error::NotMember) for a conversation
    /// scope; storage errors.
    ///
    /// # Examples
    ///
    /// ```
    /// use readmark::{Config, ConversationId, MessageId, Page, PrivacyScope, Store, Timestamp, UserId};
    /// let dir = tempfile::tempdir()?;
    /// let store = Store::open(dir.path(), Config::new())?;
    /// let (chat, alice, bob) = (ConversationId(1), UserId(1), UserId(2));
    /// store.create_conversation(chat)?;
    /// store.add_member(chat, alice, Timestamp(0))?;
    /// store.add_member(chat, bob, Timestamp(0))?;
    /// store.record_message(chat, MessageId(1), alice, Timestamp(1))?;
    /// store.mark_read(chat, bob, MessageId(1), Timestamp(2))?;
    /// assert_eq!(store.read_count(chat, alice, MessageId(1))?.count, 1);
    /// store.set_receipts_private(bob, PrivacyScope::Everywhere, true)?;
    /// assert_eq!(store.read_count(chat, alice, MessageId(1))?.count, 0);
    /// assert_eq!(store.unread_count(chat, bob)?.count, 0); // still his mark
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn set_receipts_private(
        &self,
        user: UserId,
        scope: PrivacyScope,
        private: bool,
    ) -> Result<()> {
        if let PrivacyScope::Conversation(c) = scope {
            super::threads::check_public(c)?;
        }
        // Buffered advances were made under the old setting: they are
        // written (with a run or none) under it, and no replay after a
        // crash can plan them under the new one.
        let mut affected = Vec::new();
        {
            let view = self.view();
            let of_scope = match scope {
                PrivacyScope::Conversation(c) => vec![c],
                PrivacyScope::Everywhere => self.conversations_of(user)?,
            };
            for c in of_scope {
                affected.push((c.0, user.0));
                for t in super::threads::thread_ids(&view, c)? {
                    affected.push((t, user.0));
                }
            }
        }
        self.writer.flush_keys(affected)?;
        let _settings = self.privacy_lock.lock();
        let conversations = match scope {
            PrivacyScope::Conversation(c) => vec![c],
            PrivacyScope::Everywhere => self.conversations_of(user)?,
        };
        let _guards = self.lock_many(&conversations);
        let view = self.view();
        let mut batch = WriteBatch::default();
        // Conversations where the member becomes visible or hidden.
        let (mut shown, mut hidden) = (Vec::new(), Vec::new());
        for &c in &conversations {
            let mut member = match scope {
                PrivacyScope::Conversation(_) => view.require_member(c, user)?,
                // Left in the meantime: nothing to update.
                PrivacyScope::Everywhere => match view.member_record(c, user)? {
                    Some(m) => m,
                    None => continue,
                },
            };
            let was_private = member.is_private();
            match scope {
                PrivacyScope::Conversation(_) => member.private_here = private,
                PrivacyScope::Everywhere => member.private_all = private,
            }
            match (was_private, member.is_private()) {
                (true, false) => shown.push(c),
                (false, true) => hidden.push(c),
                _ => {}
            }
            batch.put_cf(
                self.cf(Cf::Members),
                keys::member_key(c, user),
                member.encode(),
            );
        }
        if scope == PrivacyScope::Everywhere {
            batch.put_cf(
                self.cf(Cf::Users),
                keys::id_key(user.0),
                encode_user_settings(private),
            );
        }
        // A member's privacy covers the conversation's threads: under the
        // lock, which a thread's first message takes too.
        let mut timelines = std::collections::HashMap::new();
        for &c in shown.iter().chain(&hidden) {
            let mut of_c = vec![c.0];
            of_c.extend(super::threads::thread_ids(&view, c)?);
            timelines.insert(c.0, of_c);
        }
        drop(view);
        let timelines_of = |c: ConversationId| timelines.get(&c.0).cloned().unwrap_or_default();
        // Other members' catch-up lists a mark that became visible, and a
        // hidden member (as "forget it"): both as change entries.
        let mut base = 0;
        // Marks that became visible: (conversation, up_to, at).
        let mut now_visible = Vec::new();
        self.write_structural_with(batch, |v, seq, _| {
            base = seq;
            let mut rows: Vec<(u64, u64)> = hidden
                .iter()
                .flat_map(|&c| timelines_of(c))
                .map(|t| (t, user.0))
                .collect();
            for &c in &shown {
                for t in timelines_of(c) {
                    if let Some(m) = v.mark_state(ConversationId(t), user)?.mark {
                        rows.push((t, user.0));
                        now_visible.push((t, m.up_to.0, m.at.0));
                    }
                }
            }
            Ok(rows)
        })?;
        // Answers being computed now start again (`privacy_consistent`).
        self.privacy_epoch
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        // Online clients drop what they were shown (those who were members
        // at `base`, before this change).
        for &c in &hidden {
            self.events.publish_hidden(c.0, user.0, base);
        }
        // ... and are told of what they may see now, like of any read (the
        // counterpart of `Event::Hidden`).
        if self.events.has_subscribers() {
            for (c, up_to, at) in now_visible {
                let window = self.event_window_ms(ConversationId(c));
                self.events.publish(c, user.0, up_to, at, None, window);
            }
        }
        Ok(())
    }

    /// Whether `user`'s receipts are private in `scope` by that scope's own
    /// setting.
    ///
    /// # Errors
    ///
    /// As [`set_receipts_private`](Store::set_receipts_private).
    ///
    /// # Examples
    ///
    /// ```
    /// # use readmark::{Config, PrivacyScope, Store, UserId};
    /// # let dir = tempfile::tempdir()?;
    /// # let store = Store::open(dir.path(), Config::new())?;
    /// store.set_receipts_private(UserId(7), PrivacyScope::Everywhere, true)?;
    /// assert!(store.receipts_private(UserId(7), PrivacyScope::Everywhere)?);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn receipts_private(&self, user: UserId, scope: PrivacyScope) -> Result<bool> {
        if let PrivacyScope::Conversation(c) = scope {
            super::threads::check_public(c)?;
        }
        match scope {
            PrivacyScope::Conversation(c) => Ok(self.view().require_member(c, user)?.private_here),
            PrivacyScope::Everywhere => self.private_everywhere(user),
        }
    }

    /// The user's "private everywhere" setting, which a new membership
    /// copies. Read under `privacy_lock`.
    pub(crate) fn private_everywhere(&self, user: UserId) -> Result<bool> {
        match self.view().get_raw(Cf::Users, &keys::id_key(user.0))? {
            None => Ok(false),
            Some(v) => decode_user_settings(&v).ok_or_else(|| {
                super::corrupt(Cf::Users, &keys::id_key(user.0), "bad user settings")
            }),
        }
    }
}
