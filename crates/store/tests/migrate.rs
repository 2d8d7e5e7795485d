//! Moving a store between the embedded file and PostgreSQL, both ways (issue 24 §1): a store
//! with every record kind is copied, and on the target every token verifies as before (same
//! restrictions, claims), revoked tokens and keys stay revoked, sessions keep refreshing with
//! reuse detection, single uses stay spent, and the revocation feed continues from its numbers.

#![allow(clippy::unwrap_used)] // test fixtures: a panic is the failure report

mod common;

use std::time::Duration;

use common::*;
use tessera_core::envelope::Algorithm;
use tessera_core::{
    Context, CustomClaims, Identifier, KeyId, Restrictions, SessionId, Token, TokenId, Verifier,
};
use tessera_store::{
    migrate, Actor, AppRecord, AuditAnchor, AuditEntry, AuditFilter, AuditHead, AuditVerdict, Error,
    Location, NewToken, Notice, Progress, Refreshed, SessionRecord, Store,
};

/// What the filled store holds, and what each token gave before the move.
struct Filled {
    /// (token text, what verifying it gave: restrictions, or the error's text).
    tokens: Vec<(String, Result<Restrictions, String>)>,
    sid: SessionId,
    /// The session's current and spent refresh token families.
    current: TokenId,
    spent: TokenId,
    once: TokenId,
    kid: KeyId,
    revoked_kid: KeyId,
    tids: Vec<TokenId>,
}

fn mint(store: &Store, new: NewToken, claims: Option<&str>, caveats: &[&str]) -> (String, NewToken) {
    let key = store.verifying_key(&new.kid).unwrap();
    let mut id = Identifier::new(new.kid, new.tid, new.subject.clone()).unwrap();
    if let Some(c) = claims {
        id = id.with_claims(CustomClaims::from_json(c).unwrap());
    }
    let mut token = Token::mint_tessera(Some("https://node.example"), &key, &id).unwrap();
    for c in caveats {
        token = token.attenuate(c).unwrap();
    }
    (token.encode(), new)
}

fn verify(store: &Store, text: &str) -> Result<Restrictions, String> {
    let token = Token::decode(text).unwrap();
    let ctx = Context::now().operation("read").resource("docs/a");
    Verifier::with_keys(store).verify(&token, &[], &ctx).map(|v| v.restrictions()).map_err(|e| e.to_string())
}

fn session_of(subject: &str) -> SessionRecord {
    // Every optional field set, so that a copy that drops one is seen.
    SessionRecord {
        app: Some("billing".into()),
        claims: Some(r#"{"team":"ops"}"#.into()),
        ..common::session_of(subject)
    }
}

/// A store with every record kind: keys (retired, active, revoked), signing keys, an
/// application, tokens with lineage, claims and caveats, a link, a spent single-use token, last
/// uses, a notice, a rotated session, revocations of families and of a key.
fn fill(store: &Store) -> Filled {
    let revoked_kid = store.rotate().unwrap().kid;
    let mut tokens = Vec::new();
    let mut tids = Vec::new();
    let mut record = |store: &Store, new: NewToken, claims: Option<&str>, caveats: &[&str]| {
        let (text, new) = mint(store, new, claims, caveats);
        tids.push(new.tid);
        store.record_token(new.clone()).unwrap();
        tokens.push(text);
        new.tid
    };
    // Under a key that is revoked below.
    record(store, new_token(store, "mallory", None), None, &[]);
    let kid = store.rotate().unwrap().kid;
    store.revoke_key(revoked_kid).unwrap();
    let mut root = new_token(store, "alice", None);
    root.caveats = vec!["allow read write".into()];
    root.expires = Some(4_000_000_000);
    let root = record(store, root, Some(r#"{"team":"ops","level":3}"#), &["allow read write"]);
    let child =
        record(store, new_token(store, "alice", Some(root)), None, &["allow read", "resource docs/*"]);
    record(store, new_token(store, "alice", Some(child)), None, &["allow read", "resource docs/a"]);
    store.rotate().unwrap(); // `kid` is now retired: it verifies, it does not sign
    let doomed = record(store, new_token(store, "bob", None), None, &[]);
    record(store, new_token(store, "bob", Some(doomed)), None, &["allow read"]);
    store.revoke_token(doomed).unwrap();
    let once = record(store, new_token(store, "carol", None), None, &["once"]);
    assert_eq!(store.consume(once).unwrap(), None);
    store.note_use(root, 1_700_000_123);
    store.flush_uses().unwrap();
    let (text, link) = mint(store, new_token(store, "dave", None), None, &["allow links.redeem"]);
    store.record_link(link.clone(), r#"{"kind":"token","ttl":60}"#.into()).unwrap();
    tokens.push(text);
    tids.push(link.tid);
    store
        .claim_notice(Notice {
            tid: root,
            threshold: 86_400,
            created: 1_700_000_000,
            delivered_at: Some(1_700_000_100),
            attempts: 2,
            next_attempt: 1_700_000_050,
        })
        .unwrap();
    // Signing keys and an application with its credential.
    store.ensure_signing_keys(Algorithm::Es256).unwrap();
    store.ensure_signing_keys(Algorithm::EdDsa).unwrap();
    let credential = new_token(store, "app:billing", None);
    tids.push(credential.tid);
    store
        .register_app(
            AppRecord {
                name: "billing".into(),
                audience: "https://billing.example".into(),
                ttl: 300,
                algorithms: vec!["ES256".into()],
                own_keys: false,
                refresh_strategy: None,
                operations: Some(vec!["read".into()]),
                resources: None,
                credential: credential.tid,
                created: 0,
                disabled_at: None,
            },
            credential,
        )
        .unwrap();
    // A session rotated once: its first refresh token is spent.
    let sid = SessionId::generate().unwrap();
    let mut first = new_token(store, "alice", None);
    first.caveats = vec!["allow sessions.refresh".into()];
    store.create_session(sid, session_of("alice"), first.clone()).unwrap();
    let next = new_token(store, "alice", Some(first.tid));
    let r = store.refresh_session(sid, first.tid, Some(next.clone()), Duration::ZERO).unwrap();
    assert!(matches!(r, Refreshed::Current { rotated_to: Some(t), .. } if t == next.tid), "{r:?}");
    tids.extend([first.tid, next.tid]);
    let tokens = tokens
        .into_iter()
        .map(|t| {
            let was = verify(store, &t);
            (t, was)
        })
        .collect::<Vec<_>>();
    // Under the revoked key, the family, its child, its grandchild, a revoked family, its child.
    let ok: Vec<bool> = tokens.iter().take(6).map(|(_, v)| v.is_ok()).collect();
    assert_eq!(ok, [false, true, true, true, false, false], "{tokens:?}");
    Filled { tokens, sid, current: next.tid, spent: first.tid, once, kid, revoked_kid, tids }
}

/// Everything a store says about its records, in a form two stores can be compared by.
fn describe(store: &Store, f: &Filled) -> String {
    let mut out = String::new();
    let keys: Vec<String> = store.list_keys().unwrap().iter().map(|k| format!("{k:?}")).collect();
    out += &format!("keys {keys:?}\n");
    out += &format!("signing {:?}\n", store.signing_keys());
    out += &format!("apps {:?}\n", store.apps());
    for tid in &f.tids {
        out += &format!("token {:?}\n", store.token(tid).unwrap());
        out += &format!("children {:?}\n", store.children_of(tid).unwrap());
        out += &format!("notices {:?}\n", store.notices_of(tid).unwrap());
    }
    for subject in ["alice", "bob", "carol", "dave", "mallory", "app:billing"] {
        let mut of: Vec<TokenId> = store.tokens_of(subject).unwrap().iter().map(|t| t.tid).collect();
        of.sort();
        out += &format!("of {subject} {of:?}\n");
    }
    out += &format!("session {:?}\n", store.session(&f.sid).unwrap());
    out += &format!("feed {:?}\n", store.revocations_after(0, 10_000).unwrap());
    out += &format!("last change {}\n", store.last_applied());
    out
}

/// The target answers as the source did, and goes on working.
fn check_target(target: &Store, f: &Filled, before: &str) {
    assert_eq!(describe(target, f), before, "the target's records differ from the source's");
    for (text, was) in &f.tokens {
        assert_eq!(&verify(target, text), was, "token verifies differently after the move: {text}");
    }
    assert!(f.tokens.iter().any(|(_, v)| v.is_ok()) && f.tokens.iter().any(|(_, v)| v.is_err()));
    assert!(target.verifying_key(&f.kid).is_some(), "the retired key verifies");
    assert!(target.verifying_key(&f.revoked_kid).is_none(), "the revoked key came back");
    // The single use stays spent.
    assert!(target.consume(f.once).unwrap().is_some(), "a spent single-use token can be used again");
    // The change log (and with it the revocation feed) continues from the same numbers.
    let last = target.last_applied();
    let extra = target.record_token(new_token(target, "erin", None)).unwrap().tid;
    let r = target.revoke_token(extra).unwrap();
    assert_eq!(r[0].seq, last + 1, "the revocation feed does not continue from its numbers");
    // Sessions refresh, and reuse of the spent refresh token is detected.
    let next = new_token(target, "alice", Some(f.current));
    let r = target.refresh_session(f.sid, f.current, Some(next), Duration::ZERO).unwrap();
    assert!(matches!(r, Refreshed::Current { .. }), "{r:?}");
    let r = target.refresh_session(f.sid, f.spent, None, Duration::ZERO).unwrap();
    assert_eq!(r, Refreshed::ReuseDetected);
    assert!(matches!(
        target.refresh_session(f.sid, f.current, None, Duration::ZERO),
        Err(Error::SessionRevoked(_))
    ));
}

fn no_progress(_: Progress) {}

/// File → PostgreSQL → file: the cluster answers as the node did, and so does the file the
/// cluster is moved back into.
#[test]
fn a_store_with_every_record_kind_moves_to_postgres_and_back() {
    let file = Db::file();
    let (filled, before, last_change) = {
        let store = file.open();
        let filled = fill(&store);
        let before = describe(&store, &filled);
        (filled, before, store.last_applied())
    };
    let pg = Db::postgres();
    let mut seen = Vec::new();
    let report = migrate(&file.location(), &pg.location(), &master(), &mut |p| seen.push(p)).unwrap();
    assert_eq!(report.last_change, last_change);
    assert!(last_change > 3, "key changes, signing keys and apps are entries too");
    assert_eq!(report.tables.iter().find(|(t, _)| *t == "tokens").unwrap().1, filled.tids.len() as u64);
    assert!(seen.iter().any(|p| p.table == "changes" && p.done == p.total && p.total > 0), "{seen:?}");
    {
        // The source is left as it was.
        let store = file.open();
        assert_eq!(describe(&store, &filled), before);
    }
    {
        let cluster = pg.open();
        assert_eq!(describe(&cluster, &filled), before);
        for (text, was) in &filled.tokens {
            assert_eq!(&verify(&cluster, text), was);
        }
    }
    // And back, into a new file: then the target goes on working.
    let back = Db::file();
    migrate(&pg.location(), &back.location(), &master(), &mut no_progress).unwrap();
    check_target(&back.open(), &filled, &before);
    // The cluster itself goes on working too.
    check_target(&pg.open(), &filled, &before);
}

/// A target that holds anything is refused, and left as it was.
#[test]
fn a_target_that_holds_data_is_refused_and_left_alone() {
    let file = Db::file();
    fill(&file.open());
    for target in [Db::file(), Db::postgres()] {
        let store = target.open();
        let kid = store.rotate().unwrap().kid;
        drop(store);
        let err = migrate(&file.location(), &target.location(), &master(), &mut no_progress).unwrap_err();
        assert!(matches!(err, Error::TargetNotEmpty(_)), "{err}");
        let store = target.open();
        let keys = store.list_keys().unwrap();
        assert_eq!(keys.len(), 1);
        assert_eq!(keys[0].kid, kid);
        assert!(store.tokens_of("alice").unwrap().is_empty());
    }
}

/// The wrong master key is found before anything is written: the target is not even created.
#[test]
fn the_wrong_master_key_writes_nothing() {
    let file = Db::file();
    fill(&file.open());
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("new.redb");
    let err = migrate(
        &file.location(),
        &Location::File(target.clone()),
        &tessera_store::MasterKey::from_bytes([8; 32]),
        &mut no_progress,
    )
    .unwrap_err();
    assert!(matches!(err, Error::WrongMasterKey), "{err}");
    assert!(!target.exists(), "the target was created before the master key was checked");
    // A missing source is an error, not a new empty source.
    let missing = dir.path().join("missing.redb");
    assert!(migrate(&Location::File(missing.clone()), &Location::File(target), &master(), &mut no_progress)
        .is_err());
    assert!(!missing.exists());
}

/// A source held by a running service is refused (its file lock), and the service's store is
/// unaffected.
#[test]
fn a_source_in_use_is_refused() {
    let file = Db::file();
    let running = file.open();
    running.rotate().unwrap();
    let pg = Db::postgres();
    let err = migrate(&file.location(), &pg.location(), &master(), &mut no_progress).unwrap_err();
    assert!(matches!(err, Error::InUse(_)), "{err}");
    assert!(pg.open().list_keys().unwrap().is_empty());
}

/// Every audit entry, by id, read page by page with the cursor.
fn audit_trail(store: &Store) -> Vec<AuditEntry> {
    let mut out: Vec<AuditEntry> = Vec::new();
    loop {
        let after = out.last().map_or(0, |e| e.id);
        let page = store.audit(&AuditFilter { after, limit: 2, ..AuditFilter::default() }).unwrap();
        if page.is_empty() {
            return out;
        }
        out.extend(page);
    }
}

/// The chain verifies (the anchor's MAC too); its anchor, its head and how many entries were
/// checked.
fn intact(store: &Store) -> (Option<AuditAnchor>, Option<AuditHead>, u64) {
    match store.verify_audit(None).unwrap() {
        AuditVerdict::Intact { anchor, head, checked, unsealed } => {
            assert_eq!(unsealed, 0);
            (anchor, head, checked)
        }
        broken => panic!("{broken:?}"),
    }
}

/// Seal until nothing is left unsealed (PostgreSQL seals an entry once no older transaction
/// runs anywhere on the server).
fn seal(store: &Store) {
    for _ in 0..3000 {
        store.seal_audit().unwrap();
        if let AuditVerdict::Intact { unsealed: 0, .. } = store.verify_audit(None).unwrap() {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    panic!("entries left unsealed");
}

/// `n` tokens recorded by alice (a `token.mint` entry each).
fn write(store: &Store, n: usize) {
    let alice = Actor {
        subject: Some("alice".into()),
        address: Some("192.0.2.7".into()),
        user_agent: Some("test-agent/1.0".into()),
        ..Actor::default()
    };
    for _ in 0..n {
        store.audited(&alice).record_token(new_token(store, "alice", None)).unwrap();
    }
}

/// The audit trail moves with its ids, places, links and anchor, file → PostgreSQL → file →
/// PostgreSQL: each target verifies intact with the source's head, reads back the same entries,
/// and chains new entries on. On the way back the PostgreSQL ids differ from the places (the
/// file keeps them: the links cover them), and unsealed entries of the source are sealed first.
#[test]
fn the_audit_trail_moves_with_its_chain_both_ways() {
    let file = Db::file();
    {
        let store = file.open();
        store.rotate().unwrap();
        write(&store, 3);
        std::thread::sleep(Duration::from_millis(5));
        let cut = store.audit(&AuditFilter::default()).unwrap().last().unwrap().at_ms + 1;
        std::thread::sleep(Duration::from_millis(5));
        write(&store, 3);
        assert_eq!(store.prune_audit(cut).unwrap(), 4, "the rotation and the first three");
    }
    let (trail, (anchor, head, checked)) = {
        let store = file.open();
        (audit_trail(&store), intact(&store))
    };
    assert_eq!((anchor.unwrap().seq, head.unwrap().seq, checked, trail.len()), (4, 7, 3, 3));
    // The anchor carries its time and MAC; every target below keeps both (the equality of
    // `intact`'s anchors), so its MAC still checks there.
    assert!(anchor.unwrap().pruned_at_ms().is_some());

    // File → PostgreSQL.
    let pg = Db::postgres();
    let report = migrate(&file.location(), &pg.location(), &master(), &mut no_progress).unwrap();
    assert!(report.tables.contains(&("audit", 3)), "{:?}", report.tables);
    let cluster = pg.open();
    assert_eq!(intact(&cluster), (anchor, head, 3));
    assert_eq!(audit_trail(&cluster), trail);
    // New entries continue the chain; ids jump past the places (as a rolled-back or slow
    // transaction makes them on a cluster), and the last two stay unsealed until the migration.
    let Db::Postgres(url) = &pg else { unreachable!() };
    common::pg().sql(url, "SELECT setval(pg_get_serial_sequence('tessera_audit', 'id'), 1000)");
    write(&cluster, 2);
    seal(&cluster);
    let (_, pg_head, _) = intact(&cluster);
    assert_eq!(pg_head.unwrap().seq, 9);
    write(&cluster, 2);
    match cluster.verify_audit(None).unwrap() {
        AuditVerdict::Intact { unsealed, .. } => assert_eq!(unsealed, 2),
        broken => panic!("{broken:?}"),
    }
    drop(cluster);

    // PostgreSQL → file: sealed first, then copied with the PostgreSQL ids.
    let back = Db::file();
    migrate(&pg.location(), &back.location(), &master(), &mut no_progress).unwrap();
    let cluster = pg.open();
    let (_, pg_head, _) = intact(&cluster);
    assert_eq!(pg_head.unwrap().seq, 11);
    let pg_trail = audit_trail(&cluster);
    assert_eq!(pg_trail.iter().map(|e| e.id).collect::<Vec<_>>(), vec![5, 6, 7, 1001, 1002, 1003, 1004]);
    drop(cluster);
    let node = back.open();
    assert_eq!(intact(&node), (anchor, pg_head, 7));
    assert_eq!(audit_trail(&node), pg_trail);
    write(&node, 1);
    let (_, node_head, checked) = intact(&node);
    assert_eq!((node_head.unwrap().seq, checked), (12, 8));
    let newest = audit_trail(&node).pop().unwrap();
    assert_eq!((newest.seq, newest.id, newest.actor.subject.as_deref()), (12, 1005, Some("alice")));
    let node_trail = audit_trail(&node);
    drop(node);

    // And the file with copied ids to PostgreSQL again: the ids travel on.
    let again = Db::postgres();
    migrate(&back.location(), &again.location(), &master(), &mut no_progress).unwrap();
    let cluster = again.open();
    assert_eq!(intact(&cluster), (anchor, node_head, 8));
    assert_eq!(audit_trail(&cluster), node_trail);
    write(&cluster, 1);
    seal(&cluster);
    let newest = audit_trail(&cluster).pop().unwrap();
    assert_eq!((newest.seq, newest.id), (13, 1006));
    assert_eq!(intact(&cluster).2, 9);
}

/// A target that already has an audit trail (even only entries) is refused.
#[test]
fn a_target_with_an_audit_trail_is_refused() {
    let file = Db::file();
    {
        let store = file.open();
        store.rotate().unwrap();
        write(&store, 1);
    }
    let pg = Db::postgres();
    {
        let cluster = pg.open();
        cluster.audit_note(tessera_store::AuditNote {
            kind: tessera_store::AuditKind::Refused,
            outcome: tessera_store::Outcome::Refused,
            actor: Actor::system(),
            target: tessera_store::Target::default(),
            reason: Some("test".into()),
            detail: None,
        });
        for _ in 0..500 {
            if !audit_trail(&cluster).is_empty() {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(audit_trail(&cluster).len(), 1);
    }
    let err = migrate(&file.location(), &pg.location(), &master(), &mut no_progress).unwrap_err();
    assert!(matches!(err, Error::TargetNotEmpty(_)), "{err}");
    assert!(pg.open().list_keys().unwrap().is_empty());
}
