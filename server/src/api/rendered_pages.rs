//! The latest page of each session's history as `getMessages` last answered it, kept as its body's bytes, so
//! that asking for an unchanged page again writes those bytes instead of serializing every message again.
//!
//! Why: a client polling its conversation gets the same twenty messages again and again, and writing them as
//! JSON (escaping each content, formatting each id and timestamp) was the largest part of the route's own work
//! (see BENCHMARKS.md). A kept body is answered only for the same page: the same messages (by id, in order;
//! a message never changes once stored) and the same `hasMore`, which fix every byte of the body. The page
//! itself is still read for each request (the session must be live, and the page is what identifies the
//! body), from the store's history cache.

use bytes::Bytes;
use poem::{IntoResponse, Response};
use uuid::Uuid;

use super::json_out::{json_answer, json_response};
use super::kept::{Kept, Weighed};
use super::messages::message_list;
use crate::service::MessagePage;

/// Bytes of bodies kept.
const KEPT_BYTES: u64 = 8 << 20;
/// Pages expected at most, for the cache's sizing: a few kilobytes each.
const EXPECTED_PAGES: usize = 2_000;

/// A page as answered: what identifies it, and its body.
struct Rendered {
    ids: Box<[Uuid]>,
    has_more: bool,
    body: Bytes,
}

impl Rendered {
    fn shows(&self, page: &MessagePage) -> bool {
        self.has_more == page.has_more
            && self.ids.len() == page.messages.len()
            && self
                .ids
                .iter()
                .zip(&page.messages)
                .all(|(id, m)| *id == m.id)
    }
}

impl Weighed for Rendered {
    fn bytes(&self) -> u64 {
        (self.body.len() + self.ids.len() * size_of::<Uuid>()) as u64
    }
}

/// The kept pages, by session.
pub struct RenderedPages {
    pages: Kept<Rendered>,
}

impl Default for RenderedPages {
    fn default() -> Self {
        Self {
            pages: Kept::new(EXPECTED_PAGES, KEPT_BYTES),
        }
    }
}

impl RenderedPages {
    /// The latest page of a session's history as `getMessages` answers it: the kept body if it shows this page,
    /// else the page serialized (and kept).
    pub fn answer(&self, page: MessagePage) -> Response {
        let Some(session) = page.messages.first().map(|m| m.session_id) else {
            return message_list(page).into_response();
        };
        if let Some(kept) = self.pages.get(&session).filter(|kept| kept.shows(&page)) {
            return json_response(kept.body.clone());
        }
        let ids = page.messages.iter().map(|m| m.id).collect();
        let has_more = page.has_more;
        let body = serde_json::to_vec(&message_list(page).0).map(Bytes::from);
        if let Ok(body) = &body {
            let rendered = Rendered {
                ids,
                has_more,
                body: body.clone(),
            };
            self.pages.insert(session, rendered);
        }
        json_answer(body)
    }
}
