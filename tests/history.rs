//! History (`getMessages`): a seeded property test of pagination over colliding timestamps, reply order under concurrent sends, reads that do not renew, and the listing's errors.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Instant;

use agent_sessions::types;
use agent_sessions_server::domain::Message;
use agent_sessions_server::store::{MessageWindow, Order};
use chrono::{DateTime, FixedOffset, SecondsFormat, Utc};
use futures::future::join_all;
use uuid::Uuid;

use crate::support::*;

// ---------------------------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------------------------

/// SplitMix64: a tiny deterministic generator, so a failing case is reproducible from its seed.
struct Rng(u64);

impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `lo..=hi`.
    fn range(&mut self, lo: i64, hi: i64) -> i64 {
        lo + (self.next_u64() % ((hi - lo + 1) as u64)) as i64
    }

    fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.range(0, items.len() as i64 - 1) as usize]
    }

    fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            let j = self.range(0, i as i64) as usize;
            items.swap(i, j);
        }
    }
}

fn ms_to_time(ms: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(ms).expect("valid epoch ms")
}

/// A cursor as ISO-8601 with millisecond precision, in UTC (`...Z`) or at a fixed offset (`...+05:30`).
fn iso_cursor(ms: i64, offset_minutes: i32) -> String {
    let t = ms_to_time(ms);
    if offset_minutes == 0 {
        t.to_rfc3339_opts(SecondsFormat::Millis, true)
    } else {
        let tz = FixedOffset::east_opt(offset_minutes * 60).expect("valid offset");
        t.with_timezone(&tz)
            .to_rfc3339_opts(SecondsFormat::Millis, false)
    }
}

/// A page in short: its contents, `hasMore` and cursors, for readable failures.
fn shape(list: &types::MessageList) -> (Vec<&str>, bool, Option<(i64, i64)>) {
    (
        list.messages.iter().map(|m| m.content.as_str()).collect(),
        list.has_more,
        list.cursors.as_ref().map(|c| (c.before, c.after)),
    )
}

/// One `getMessages` call through the SDK that must succeed.
async fn page(
    ctx: &TestContext,
    session_id: Uuid,
    limit: Option<i64>,
    before: Option<String>,
    after: Option<String>,
) -> types::MessageList {
    let mut req = ctx.client.get_messages().session_id(session_id.to_string());
    if let Some(limit) = limit {
        req = req.limit(limit);
    }
    if let Some(before) = &before {
        req = req.before(before.clone());
    }
    if let Some(after) = &after {
        req = req.after(after.clone());
    }
    let resp = req.send().await.unwrap_or_else(|e| {
        panic!("getMessages limit={limit:?} before={before:?} after={after:?}: {e:?}")
    });
    assert_eq!(resp.status().as_u16(), 200);
    resp.into_inner()
}

/// Checks the cursors of a page: none when empty, else the epoch ms of its oldest and newest message.
fn assert_cursors(list: &types::MessageList, what: &str) {
    match (&list.cursors, list.messages.first(), list.messages.last()) {
        (None, None, None) => {}
        (Some(c), Some(newest), Some(oldest)) => {
            assert_eq!(
                c.before,
                oldest.created_at.timestamp_millis(),
                "{what}: cursors.before"
            );
            assert_eq!(
                c.after,
                newest.created_at.timestamp_millis(),
                "{what}: cursors.after"
            );
        }
        (c, _, _) => panic!(
            "{what}: a page of {} messages has cursors {c:?}",
            list.messages.len()
        ),
    }
}

/// The whole history, paging backward from the newest; returned oldest first (chronological).
async fn whole_history(
    ctx: &TestContext,
    session_id: Uuid,
    limit: Option<i64>,
) -> Vec<types::Message> {
    let mut newest_first = Vec::new();
    let mut before: Option<i64> = None;
    for _ in 0..10_000 {
        let list = page(ctx, session_id, limit, before.map(|b| b.to_string()), None).await;
        assert_cursors(&list, "whole history");
        newest_first.extend(list.messages.iter().cloned());
        if !list.has_more {
            newest_first.reverse();
            return newest_first;
        }
        before = Some(
            list.cursors
                .expect("a page with hasMore has cursors")
                .before,
        );
    }
    panic!("paging backward never ended");
}

// ---------------------------------------------------------------------------------------------------------------
// 1. Pagination property test
// ---------------------------------------------------------------------------------------------------------------

/// A message as the test stored it; `idx` is its insertion index, hence the order of its store `seq`.
#[derive(Debug, Clone)]
struct Stored {
    id: Uuid,
    idx: usize,
    ms: i64,
    is_agent: bool,
    author: Uuid,
    content: String,
}

/// The page the documented algorithm must return from `remaining` (in reading order: newest first backward,
/// oldest first forward): the first `limit`, except that a page never ends inside a group of equal timestamps
/// (the group is left for the next page, or returned whole if it alone fills the page). Returns the page in
/// reading order and whether anything is left after it.
fn model_page(remaining: &[Stored], limit: usize) -> (Vec<Stored>, bool) {
    if remaining.len() <= limit {
        return (remaining.to_vec(), false);
    }
    let edge = remaining[limit - 1].ms;
    if remaining[limit].ms != edge {
        return (remaining[..limit].to_vec(), true);
    }
    let kept: Vec<Stored> = remaining[..limit]
        .iter()
        .filter(|m| m.ms != edge)
        .cloned()
        .collect();
    if !kept.is_empty() {
        return (kept, true);
    }
    let group: Vec<Stored> = remaining
        .iter()
        .take_while(|m| m.ms == edge)
        .cloned()
        .collect();
    let more = remaining.len() > group.len();
    (group, more)
}

struct Case {
    seed: u64,
    n: usize,
    span: i64,
    insert_order: &'static str,
    limit: Option<i64>,
    iso_offset: i32,
}

impl std::fmt::Display for Case {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "case seed={:#x} n={} span={}ms insert={} limit={:?} iso_offset={}min",
            self.seed, self.n, self.span, self.insert_order, self.limit, self.iso_offset
        )
    }
}

fn gen_case(seed: u64) -> Case {
    let mut rng = Rng(seed);
    let n = match rng.range(0, 9) {
        0 => rng.range(0, 3),
        1..=3 => rng.range(0, 40),
        _ => rng.range(0, 250),
    } as usize;
    let span = rng.pick(&[1, 2, 5, 40, 40, 40, 40, 1000]);
    let insert_order = rng.pick(&["shuffled", "shuffled", "ascending", "descending"]);
    let limit = match rng.range(0, 5) {
        0 => None,
        1 | 2 => Some(rng.range(1, 10)),
        _ => Some(rng.range(1, 100)),
    };
    let iso_offset = rng.pick(&[0, 0, 330, -480]);
    Case {
        seed,
        n,
        span,
        insert_order,
        limit,
        iso_offset,
    }
}

/// Runs one case in a fresh session of `ctx`; returns how many requests it made.
/// Paging visited every message once, in the order `expected` lists them.
fn assert_visited<'a>(visited: &[Uuid], expected: impl Iterator<Item = &'a Stored>, what: &str) {
    let expected: Vec<Uuid> = expected.map(|m| m.id).collect();
    let unique: HashSet<Uuid> = visited.iter().copied().collect();
    assert_eq!(visited.len(), expected.len(), "{what}: visited count");
    assert_eq!(
        unique.len(),
        expected.len(),
        "{what}: visited a message twice"
    );
    assert_eq!(visited, expected, "{what}: order");
}

async fn run_case(ctx: &TestContext, case: &Case) -> usize {
    let mut rng = Rng(case.seed ^ 0xD1B5_4A32_D192_ED03);
    let session = ctx.create_session(None).await;
    let sid = session.session_id;
    let base = session.created_at.timestamp_millis() + 1_000;

    // Timestamps from a small range (many collisions), inserted in a chosen order.
    let mut times: Vec<i64> = (0..case.n)
        .map(|_| base + rng.range(0, case.span - 1))
        .collect();
    match case.insert_order {
        "ascending" => times.sort_unstable(),
        "descending" => times.sort_unstable_by(|a, b| b.cmp(a)),
        _ => rng.shuffle(&mut times),
    }
    let mut stored = Vec::with_capacity(case.n);
    for (idx, ms) in times.into_iter().enumerate() {
        let is_agent = idx % 2 == 1;
        let author = if is_agent {
            session.agent_id
        } else {
            session.user_id
        };
        let m = Stored {
            id: Uuid::new_v4(),
            idx,
            ms,
            is_agent,
            author,
            content: format!("message {idx} at +{}ms", ms - base),
        };
        let message = Message {
            id: m.id,
            seq: 0,
            session_id: sid,
            author_id: author,
            is_agent,
            content: m.content.clone(),
            metadata: Default::default(),
            attachments: None,
            in_reply_to: None,
            created_at: ms_to_time(ms),
        };
        assert!(
            ctx.store
                .insert_reply(&message, vec![])
                .await
                .expect("insert"),
            "{case}: insert_reply refused a message of a live session"
        );
        stored.push(m);
    }

    // The model's premise: the store's tie-break `seq` follows insertion order.
    let in_store = ctx
        .store
        .list_messages(sid, MessageWindow::default(), Order::OldestFirst, u32::MAX)
        .await
        .expect("list from the store");
    assert_eq!(in_store.len(), case.n, "{case}: stored count");
    let by_id: HashMap<Uuid, &Stored> = stored.iter().map(|m| (m.id, m)).collect();
    for pair in in_store.windows(2) {
        if pair[0].created_at == pair[1].created_at {
            assert!(
                by_id[&pair[0].id].idx < by_id[&pair[1].id].idx,
                "{case}: store seq does not follow insertion order"
            );
        }
    }

    let mut chronological = stored.clone();
    chronological.sort_by_key(|m| (m.ms, m.idx));
    let mut newest_first = chronological.clone();
    newest_first.reverse();
    let limit = case.limit.unwrap_or(50).clamp(1, 100) as usize;
    let max_pages = case.n + 2;
    let mut requests = 0;

    // Checks a page against the stored messages, field by field.
    let check_fields = |list: &types::MessageList, what: &str| {
        for got in &list.messages {
            let want = by_id
                .get(&got.id)
                .unwrap_or_else(|| panic!("{case}: {what}: unknown message {}", got.id));
            assert_eq!(
                got.created_at.timestamp_millis(),
                want.ms,
                "{case}: {what}: createdAt"
            );
            assert_eq!(got.content, want.content, "{case}: {what}: content");
            assert_eq!(got.is_agent, want.is_agent, "{case}: {what}: isAgent");
            assert_eq!(got.author_id, want.author, "{case}: {what}: authorId");
        }
        // Newest first inside every page, ties in a stable (reverse insertion) order.
        for pair in list.messages.windows(2) {
            let (a, b) = (by_id[&pair[0].id], by_id[&pair[1].id]);
            assert!(
                (a.ms, a.idx) > (b.ms, b.idx),
                "{case}: {what}: not newest first: {a:?} before {b:?}"
            );
        }
        assert_cursors(list, &format!("{case}: {what}"));
    };
    // The page limit, unless one timestamp group larger than it fills the page.
    let check_size = |list: &types::MessageList, what: &str| {
        if list.messages.len() > limit {
            let ms = list.messages[0].created_at;
            assert!(
                list.messages.iter().all(|m| m.created_at == ms),
                "{case}: {what}: {} messages over the limit {limit} that are not one timestamp group",
                list.messages.len()
            );
            let group = stored
                .iter()
                .filter(|m| m.ms == ms.timestamp_millis())
                .count();
            assert_eq!(
                list.messages.len(),
                group,
                "{case}: {what}: an oversized page must be exactly its timestamp group"
            );
        }
    };

    // Backward from the newest.
    let mut visited: Vec<Uuid> = Vec::new();
    let mut before: Option<i64> = None;
    for page_no in 0.. {
        assert!(page_no <= max_pages, "{case}: backward paging does not end");
        let what = format!("backward page {page_no} (before={before:?})");
        let list = page(ctx, sid, case.limit, before.map(|b| b.to_string()), None).await;
        requests += 1;
        if let Some(b) = before {
            let iso = iso_cursor(b, case.iso_offset);
            let again = page(ctx, sid, case.limit, Some(iso.clone()), None).await;
            requests += 1;
            assert!(
                again == list,
                "{case}: {what}: before={iso} differs from before={b}:\n iso: {:?}\n  ms: {:?}",
                shape(&again),
                shape(&list)
            );
        }
        check_fields(&list, &what);
        check_size(&list, &what);
        let remaining: Vec<Stored> = newest_first
            .iter()
            .filter(|m| before.is_none_or(|b| m.ms < b))
            .cloned()
            .collect();
        let (want, want_more) = model_page(&remaining, limit);
        let got: Vec<&str> = list.messages.iter().map(|m| m.content.as_str()).collect();
        let wanted: Vec<&str> = want.iter().map(|m| m.content.as_str()).collect();
        assert_eq!(got, wanted, "{case}: {what}: page");
        // hasMore is exact: true iff older messages than the page's oldest exist.
        let exact_more = match list.messages.last() {
            Some(oldest) => stored
                .iter()
                .any(|m| m.ms < oldest.created_at.timestamp_millis()),
            None => false,
        };
        assert_eq!(list.has_more, exact_more, "{case}: {what}: hasMore");
        assert_eq!(list.has_more, want_more, "{case}: {what}: hasMore (model)");
        visited.extend(list.messages.iter().map(|m| m.id));
        if !list.has_more {
            break;
        }
        before = Some(list.cursors.as_ref().expect("cursors").before);
    }
    assert_visited(&visited, newest_first.iter(), &format!("{case}: backward"));

    // Forward from before the oldest.
    let oldest_ms = chronological.first().map_or(base, |m| m.ms);
    let mut visited: Vec<Uuid> = Vec::new();
    let mut after = oldest_ms - 1;
    for page_no in 0.. {
        assert!(page_no <= max_pages, "{case}: forward paging does not end");
        let what = format!("forward page {page_no} (after={after})");
        let list = page(ctx, sid, case.limit, None, Some(after.to_string())).await;
        let iso = iso_cursor(after, case.iso_offset);
        let again = page(ctx, sid, case.limit, None, Some(iso.clone())).await;
        requests += 2;
        assert!(
            again == list,
            "{case}: {what}: after={iso} differs from after={after}:\n iso: {:?}\n  ms: {:?}",
            shape(&again),
            shape(&list)
        );
        check_fields(&list, &what);
        check_size(&list, &what);
        let remaining: Vec<Stored> = chronological
            .iter()
            .filter(|m| m.ms > after)
            .cloned()
            .collect();
        let (want, want_more) = model_page(&remaining, limit);
        let got: Vec<&str> = list
            .messages
            .iter()
            .rev()
            .map(|m| m.content.as_str())
            .collect();
        let wanted: Vec<&str> = want.iter().map(|m| m.content.as_str()).collect();
        assert_eq!(got, wanted, "{case}: {what}: page (oldest first)");
        // hasMore is exact: true iff newer messages than the page's newest exist.
        let exact_more = match list.messages.first() {
            Some(newest) => stored
                .iter()
                .any(|m| m.ms > newest.created_at.timestamp_millis()),
            None => false,
        };
        assert_eq!(list.has_more, exact_more, "{case}: {what}: hasMore");
        assert_eq!(list.has_more, want_more, "{case}: {what}: hasMore (model)");
        visited.extend(list.messages.iter().rev().map(|m| m.id));
        if !list.has_more {
            break;
        }
        after = list.cursors.as_ref().expect("cursors").after;
    }
    assert_visited(&visited, chronological.iter(), &format!("{case}: forward"));

    // Pages past either end are empty, without cursors, and have nothing more.
    let newest_ms = chronological.last().map_or(base, |m| m.ms);
    for (before, after) in [
        (Some(oldest_ms.to_string()), None),
        (None, Some(newest_ms.to_string())),
        (Some(iso_cursor(oldest_ms, case.iso_offset)), None),
        (None, Some(iso_cursor(newest_ms, case.iso_offset))),
    ] {
        let what = format!("past the end (before={before:?}, after={after:?})");
        let list = page(ctx, sid, case.limit, before, after).await;
        requests += 1;
        assert!(list.messages.is_empty(), "{case}: {what}: messages");
        assert!(!list.has_more, "{case}: {what}: hasMore");
        assert_eq!(list.cursors, None, "{case}: {what}: cursors");
    }
    requests
}

/// Many random histories with colliding timestamps, paged backward and forward with random page sizes:
/// every message exactly once, in a stable newest-first order, `hasMore` exact, ISO cursors equal to ms ones.
/// `HISTORY_SEED` (hex or decimal) reruns from another seed; `HISTORY_CASES` changes the number of cases.
#[tokio::test]
async fn pagination_visits_every_message_once_in_both_directions() {
    let seed = std::env::var("HISTORY_SEED")
        .ok()
        .map(|s| {
            let s = s.trim();
            match s.strip_prefix("0x") {
                Some(hex) => u64::from_str_radix(hex, 16).expect("HISTORY_SEED hex"),
                None => s.parse().expect("HISTORY_SEED"),
            }
        })
        .unwrap_or(0x5EED_0F41_570B_1E00);
    let cases: u64 = std::env::var("HISTORY_CASES")
        .ok()
        .map(|s| s.parse().expect("HISTORY_CASES"))
        .unwrap_or(40);
    let started = Instant::now();
    let ctx = TestContext::new().await;
    let mut seeds = Rng(seed);
    let (mut total_messages, mut total_requests) = (0, 0);
    for i in 0..cases {
        let mut case = gen_case(seeds.next_u64());
        // Always cover the empty history and a single group larger than the page.
        if i == 0 {
            case.n = 0;
        }
        if i == 1 {
            case.n = 120;
            case.span = 1;
        }
        total_messages += case.n;
        total_requests += run_case(&ctx, &case).await;
    }
    eprintln!(
        "history pagination: {cases} cases from seed {seed:#x}, {total_messages} messages, \
         {total_requests} requests, {:.1?}",
        started.elapsed()
    );
}

/// `limit` is clamped to 1..=100 (0 and negatives read as 1, over 100 as 100), default 50, in both directions.
#[tokio::test]
async fn limit_is_clamped_to_one_through_one_hundred() {
    let (ctx, session) = TestContext::with_session(None).await;
    let sid = session.session_id;
    let base = session.created_at.timestamp_millis() + 1;
    for i in 0..150 {
        let message = Message {
            id: Uuid::new_v4(),
            seq: 0,
            session_id: sid,
            author_id: session.user_id,
            is_agent: false,
            content: format!("m{i}"),
            metadata: Default::default(),
            attachments: None,
            in_reply_to: None,
            created_at: ms_to_time(base + i),
        };
        assert!(ctx
            .store
            .insert_reply(&message, vec![])
            .await
            .expect("insert"));
    }
    let after = Some((base - 1).to_string());
    for (before, after) in [(None, None), (None, after)] {
        let get = |limit: Option<i64>| page(&ctx, sid, limit, before.clone(), after.clone());
        let one = get(Some(1)).await;
        let hundred = get(Some(100)).await;
        assert_eq!(one.messages.len(), 1);
        assert_eq!(hundred.messages.len(), 100);
        assert!(one.has_more && hundred.has_more);
        let ids = |list: &types::MessageList| {
            let ids: Vec<Uuid> = list.messages.iter().map(|m| m.id).collect();
            (ids, list.has_more, list.cursors.clone())
        };
        for limit in [0, -1, -1000, i64::MIN] {
            let got = get(Some(limit)).await;
            assert_eq!(ids(&got), ids(&one), "limit={limit} after={after:?}");
        }
        for limit in [101, 500, i64::MAX] {
            let got = get(Some(limit)).await;
            assert_eq!(ids(&got), ids(&hundred), "limit={limit} after={after:?}");
        }
        let default = get(None).await;
        assert_eq!(default.messages.len(), 50, "default limit, after={after:?}");
        assert_eq!(ids(&default), ids(&get(Some(50)).await));
    }
}

// ---------------------------------------------------------------------------------------------------------------
// 2. Reply order under concurrent sends
// ---------------------------------------------------------------------------------------------------------------

/// A history as one line per message, for readable failures.
fn summary(history: &[types::Message]) -> Vec<String> {
    history
        .iter()
        .map(|m| {
            format!(
                "{}: {}",
                if m.is_agent { "agent" } else { "user" },
                m.content
            )
        })
        .collect()
}

/// Sends `m0`, `m1`, ... `m{n-1}` at once, each from a task of its own, `mi` with the transport `transport(i)`;
/// returns each send's index, transport, status and body, in the order of the indices. A failed send panics.
async fn concurrent_sends(
    ctx: &TestContext,
    session: &str,
    n: usize,
    transport: fn(usize) -> types::TransportType,
) -> Vec<(usize, types::TransportType, u16, types::MessageResponse)> {
    let sends = (0..n).map(|i| {
        let (client, session) = (ctx.client.clone(), session.to_string());
        tokio::spawn(async move {
            let request = message(&format!("m{i}"), transport(i));
            let call = client.send_message().session_id(session).body(request);
            let resp = call.send().await;
            let resp = resp.unwrap_or_else(|e| panic!("send m{i}: {e:?}"));
            (i, transport(i), resp.status().as_u16(), resp.into_inner())
        })
    });
    let joined = join_all(sends).await.into_iter();
    joined.map(|sent| sent.expect("send task")).collect()
}

/// Replies are stored in the order of the messages they answer: the k-th reply in the history answers the
/// k-th user message and comes after it. Returns how many user messages were immediately followed by their
/// reply (not a guarantee: another send may store its message before the previous reply is stored).
fn assert_replies_in_message_order(
    history: &[types::Message],
    session: &types::Session,
    sent: usize,
) -> usize {
    let listing = || summary(history).join("\n");
    assert_eq!(history.len(), 2 * sent, "history:\n{}", listing());
    let users: Vec<(usize, &types::Message)> = history
        .iter()
        .enumerate()
        .filter(|(_, m)| !m.is_agent)
        .collect();
    let agents: Vec<(usize, &types::Message)> = history
        .iter()
        .enumerate()
        .filter(|(_, m)| m.is_agent)
        .collect();
    assert_eq!(users.len(), sent, "user messages; history:\n{}", listing());
    assert_eq!(agents.len(), sent, "replies; history:\n{}", listing());
    let contents: HashSet<&str> = users.iter().map(|(_, m)| m.content.as_str()).collect();
    assert_eq!(contents.len(), sent, "each message stored once");
    for ((ui, user), (ai, reply)) in users.iter().zip(&agents) {
        assert_eq!(user.author_id, session.user_id);
        assert_eq!(reply.author_id, session.agent_id);
        assert_eq!(
            reply.content,
            format!("Echo: {}", user.content),
            "the reply at position {ai} does not answer the message at position {ui}; history:\n{}",
            listing()
        );
        assert!(
            ai > ui,
            "reply stored before its message; history:\n{}",
            listing()
        );
    }
    users
        .iter()
        .filter(|(ui, user)| {
            history.get(ui + 1).is_some_and(|next| {
                next.is_agent && next.content == format!("Echo: {}", user.content)
            })
        })
        .count()
}

/// 40 concurrent `http` sends: each response carries its own reply, and the history holds the replies in the
/// order of the messages.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_http_sends_are_answered_in_message_order() {
    let (ctx, session) = TestContext::with_session(None).await;
    let sid = session.session_id.to_string();
    let http = |_| types::TransportType::Http;
    for (i, _, status, body) in concurrent_sends(&ctx, &sid, 40, http).await {
        assert_eq!(status, 201, "m{i}");
        assert_eq!(body.user_message.content, format!("m{i}"));
        let reply = body
            .agent_response
            .as_ref()
            .expect("http carries the reply");
        assert_eq!(reply.text, format!("Echo: m{i}"), "the response of m{i}");
        assert_eq!(
            body.data.agent_response, body.agent_response,
            "data repeats the reply"
        );
    }
    // Same history whatever the page size (the clock stands still: one timestamp group of 80).
    let history = whole_history(&ctx, session.session_id, None).await;
    let small_pages = whole_history(&ctx, session.session_id, Some(7)).await;
    assert_eq!(summary(&small_pages), summary(&history), "pages of 7 vs 50");
    let adjacent = assert_replies_in_message_order(&history, &session, 40);
    eprintln!("concurrent http sends: {adjacent}/40 messages immediately followed by their reply");
}

/// Mixed `websocket` and `http` sends, then one last `http` send once all others returned: when it is
/// answered, every earlier reply is stored, in the order of the messages.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn mixed_transport_sends_are_answered_in_message_order() {
    let (ctx, session) = TestContext::with_session(None).await;
    let sid = session.session_id.to_string();
    let alternate = |i| match i % 2 {
        0 => types::TransportType::Websocket,
        _ => types::TransportType::Http,
    };
    for (i, transport, status, body) in concurrent_sends(&ctx, &sid, 39, alternate).await {
        assert_eq!(status, 201, "m{i}");
        assert_eq!(body.user_message.content, format!("m{i}"));
        match transport {
            types::TransportType::Http => assert_eq!(
                body.agent_response.map(|r| r.text),
                Some(format!("Echo: m{i}"))
            ),
            _ => assert_eq!(body.agent_response, None, "websocket answers at once"),
        }
    }
    let last = ctx.send(&sid, "m39", types::TransportType::Http).await;
    assert_eq!(
        last.agent_response.map(|r| r.text).as_deref(),
        Some("Echo: m39")
    );
    let history = whole_history(&ctx, session.session_id, Some(10)).await;
    let adjacent = assert_replies_in_message_order(&history, &session, 40);
    assert_eq!(
        history.last().map(|m| m.content.as_str()),
        Some("Echo: m39")
    );
    eprintln!("mixed transport sends: {adjacent}/40 messages immediately followed by their reply");
}

/// What the mock webhook agent saw: the messages it was asked about, in arrival order, and the most requests
/// it ever had in flight at once.
#[derive(Default)]
struct HookLog {
    asked: std::sync::Mutex<Vec<String>>,
    in_flight: std::sync::atomic::AtomicUsize,
    max_in_flight: std::sync::atomic::AtomicUsize,
}

/// A webhook agent on `127.0.0.1:0` answering `Hook: <content>` (one request per connection). It lingers over
/// each request (yielding to the scheduler, no sleeping) so that a server asking concurrently would overlap.
async fn mock_webhook() -> (String, Arc<HookLog>) {
    use std::sync::atomic::Ordering::SeqCst;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}/agent", listener.local_addr().expect("addr"));
    let log = Arc::new(HookLog::default());
    let shared = log.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                return;
            };
            let log = shared.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let (head_end, length) = loop {
                    let mut piece = [0u8; 4096];
                    let n = stream.read(&mut piece).await.expect("read request");
                    assert!(n > 0, "webhook client closed early");
                    buf.extend_from_slice(&piece[..n]);
                    if let Some(at) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        let head = String::from_utf8_lossy(&buf[..at]).to_ascii_lowercase();
                        let length = head
                            .lines()
                            .find_map(|l| l.strip_prefix("content-length:"))
                            .map(|v| v.trim().parse::<usize>().expect("content-length"))
                            .expect("a content-length");
                        break (at + 4, length);
                    }
                };
                while buf.len() < head_end + length {
                    let mut piece = [0u8; 4096];
                    let n = stream.read(&mut piece).await.expect("read body");
                    assert!(n > 0, "webhook client closed mid-body");
                    buf.extend_from_slice(&piece[..n]);
                }
                let body: serde_json::Value =
                    serde_json::from_slice(&buf[head_end..head_end + length]).expect("JSON body");
                let content = body["message"]["content"]
                    .as_str()
                    .expect("message.content")
                    .to_string();
                let now = log.in_flight.fetch_add(1, SeqCst) + 1;
                log.max_in_flight.fetch_max(now, SeqCst);
                log.asked.lock().expect("log").push(content.clone());
                for _ in 0..200 {
                    tokio::task::yield_now().await;
                }
                log.in_flight.fetch_sub(1, SeqCst);
                let reply = serde_json::json!({ "text": format!("Hook: {content}") }).to_string();
                let response = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\
                     connection: close\r\n\r\n{reply}",
                    reply.len()
                );
                stream
                    .write_all(response.as_bytes())
                    .await
                    .expect("write reply");
                let _ = stream.shutdown().await;
            });
        }
    });
    (url, log)
}

/// With an agent that lingers over each request, concurrent sends (mixed transports) still reach the agent
/// one at a time, in the order the messages were stored, and the replies are stored in that order.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn agent_is_asked_one_message_at_a_time_in_stored_order() {
    use std::sync::atomic::Ordering::SeqCst;

    let ctx = TestContext::new().await;
    let (url, log) = mock_webhook().await;
    let agent = ctx.agent_with(types::AgentBackendInput::webhook(url)).await;
    let session = ctx.session_with(agent).await;
    let sid = session.session_id.to_string();
    let one_in_three = |i| match i % 3 {
        0 => types::TransportType::Websocket,
        _ => types::TransportType::Http,
    };
    for (i, transport, _, body) in concurrent_sends(&ctx, &sid, 24, one_in_three).await {
        if transport == types::TransportType::Http {
            assert_eq!(
                body.agent_response.map(|r| r.text),
                Some(format!("Hook: m{i}"))
            );
        }
    }
    let last = ctx.send(&sid, "m24", types::TransportType::Http).await;
    assert_eq!(
        last.agent_response.map(|r| r.text).as_deref(),
        Some("Hook: m24")
    );

    let history = whole_history(&ctx, session.session_id, None).await;
    let stored: Vec<String> = history
        .iter()
        .filter(|m| !m.is_agent)
        .map(|m| m.content.clone())
        .collect();
    let asked = log.asked.lock().expect("log").clone();
    assert_eq!(
        asked, stored,
        "the agent was asked in another order than messages were stored"
    );
    assert_eq!(
        log.max_in_flight.load(SeqCst),
        1,
        "the agent was asked about several messages of one session at once"
    );
    let replies: Vec<String> = history
        .iter()
        .filter(|m| m.is_agent)
        .map(|m| m.content.clone())
        .collect();
    let expected: Vec<String> = stored.iter().map(|c| format!("Hook: {c}")).collect();
    assert_eq!(replies, expected, "replies stored out of message order");
}

// ---------------------------------------------------------------------------------------------------------------
// 3. Reads do not renew
// ---------------------------------------------------------------------------------------------------------------

/// Reading the history is not activity: `lastActivity`, `expiresAt` and `renewalCount` stay, and the session
/// still expires on time.
#[tokio::test]
async fn reading_history_does_not_renew() {
    let (ctx, session) = TestContext::with_session(None).await;
    let sid = session.session_id;
    let sent = ctx.client.send_message().session_id(sid.to_string());
    let sent = sent.body(message("hello", types::TransportType::Http));
    assert_eq!(sent.send().await.expect("send").status().as_u16(), 201);
    let before = ctx.get(sid).await;
    ctx.advance_minutes(10);
    let now_ms = before.last_activity.timestamp_millis() + 10 * 60_000;
    for (before_cursor, after_cursor) in [
        (None, None),
        (Some(now_ms.to_string()), None),
        (None, Some("0".to_string())),
        (Some(now_ms.to_string()), Some("0".to_string())),
    ] {
        let list = page(&ctx, sid, Some(1), before_cursor, after_cursor).await;
        assert!(!list.messages.is_empty());
    }
    let after = ctx.get(sid).await;
    assert_eq!(after.last_activity, before.last_activity, "lastActivity");
    assert_eq!(after.expires_at, before.expires_at, "expiresAt");
    assert_eq!(after.renewal_count, before.renewal_count, "renewalCount");
    assert_eq!(
        before.time_remaining - after.time_remaining,
        10 * 60_000,
        "timeRemaining"
    );
    // 30 minutes after the last activity the session is expired, reads or not.
    ctx.advance_minutes(20);
    assert_api_error(
        ctx.try_history_page(sid).await,
        410,
        types::ErrorCode::SessionExpired,
    );
}

// ---------------------------------------------------------------------------------------------------------------
// 4. Errors
// ---------------------------------------------------------------------------------------------------------------

#[tokio::test]
async fn history_errors() {
    let (ctx, session) = TestContext::with_session(None).await;
    let sid = session.session_id.to_string();

    // Cursors that are neither epoch ms nor ISO-8601.
    for (before, after) in [
        (Some("yesterday"), None),
        (None, Some("yesterday")),
        (Some("2025-13-45T00:00:00Z"), None),
        (None, Some("12abc")),
    ] {
        let mut req = ctx.client.get_messages().session_id(sid.clone());
        if let Some(b) = before {
            req = req.before(b);
        }
        if let Some(a) = after {
            req = req.after(a);
        }
        let (status, code, message) = api_error(req.send().await);
        assert_eq!(
            (status, code),
            (400, types::ErrorCode::ValidationError),
            "before={before:?} after={after:?}: {message}"
        );
    }
    // A limit that is not an integer is a validation error too, in the API's error shape.
    let resp = ctx
        .get_raw(&format!("/api/messaging/sessions/{sid}/messages?limit=ten"))
        .await;
    assert_error(&resp, 400, "VALIDATION_ERROR");

    // Unknown and malformed session ids.
    for id in [Uuid::new_v4().to_string(), "not-a-uuid".to_string()] {
        let (status, code, message) = api_error(ctx.try_history_page(id.clone()).await);
        assert_eq!(
            (status, code),
            (404, types::ErrorCode::SessionNotFound),
            "{id}: {message}"
        );
    }

    // Expired (past the default 30-minute timeout).
    ctx.advance_minutes(31);
    let message = assert_api_error(
        ctx.try_history_page(sid.clone()).await,
        410,
        types::ErrorCode::SessionExpired,
    );
    assert!(message.contains(&sid), "{message}");
}
