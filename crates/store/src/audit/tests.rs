//! The chain's link and anchor MAC against values computed outside this code (Python's `hmac`
//! over the documented canonical bytes), and `clip` against its plain definition.

#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

use super::*;

fn hex(b: &[u8]) -> String {
    b.iter().map(|b| format!("{b:02x}")).collect()
}

fn key() -> AuditKey {
    AuditKey::from_master(&MasterKey::from_bytes([7; 32]))
}

fn full_row() -> AuditRow {
    AuditRow {
        entry: AuditEntry {
            seq: 5,
            id: 7,
            at_ms: 1_700_000_000_123,
            kind: AuditKind::TokenMint,
            outcome: Outcome::Success,
            actor: Actor {
                subject: Some("system".into()),
                tid: Some(TokenId::from_bytes([1; 16])),
                issuer: None,
                address: Some("192.0.2.1".into()),
                request_id: Some("req-1".into()),
                user_agent: Some("curl/8 é".into()),
            },
            target: Target {
                tid: Some(TokenId::from_bytes([2; 16])),
                kid: None,
                sid: Some(SessionId::from_bytes([3; 16])),
                app: Some("app".into()),
            },
            reason: None,
            detail: Some("parent=x".into()),
        },
        target_subject: Some("alice".into()),
        mac: None,
    }
}

fn sparse_row() -> AuditRow {
    AuditRow {
        entry: AuditEntry {
            seq: 1,
            id: 1,
            at_ms: -5,
            kind: AuditKind::Refused,
            outcome: Outcome::Refused,
            actor: Actor { issuer: Some("https://issuer".into()), ..Actor::default() },
            target: Target { kid: Some("abcd".into()), ..Target::default() },
            reason: Some("no".into()),
            detail: None,
        },
        target_subject: None,
        mac: None,
    }
}

/// `HMAC(HMAC(master, "tessera/audit/v1"), prev ‖ canonical)`, computed with Python's `hmac` over
/// the canonical layout written out by hand (the label; seq, id and time as 8 big-endian bytes;
/// each field 0, or 1 ‖ u32 big-endian length ‖ bytes): what every stored link was made with.
#[test]
fn links_are_the_documented_hmac() {
    let k = key();
    assert_eq!(
        hex(&k.link(&[9; 32], &full_row())),
        "6f15de6553d25dbd30a477bb9e1851ab61b9f8ed176105c791c31b763d6ebd3f"
    );
    assert_eq!(
        hex(&k.link(&[0; 32], &sparse_row())),
        "1a0117ba7f5108c2ad7d5ad26ae86cc3172703a9368a16076161c0e01c508aad"
    );
    assert!(k.checks(&[9; 32], &full_row(), &k.link(&[9; 32], &full_row())));
    assert!(!k.checks(&[8; 32], &full_row(), &k.link(&[9; 32], &full_row())));
    // The key's state is not consumed or changed by use: the same link twice.
    assert_eq!(k.link(&[9; 32], &full_row()), k.link(&[9; 32], &full_row()));
}

#[test]
fn the_anchor_mac_is_the_documented_hmac() {
    let k = key();
    let mac = k.anchor_mac(4, &[5; 32], 1_700_000_000_000);
    assert_eq!(hex(&mac), "bb18ae30eb9cd95948ebc96adc70699e00911258eec46379c1d4bb4b3fe1a44f");
    assert!(k.checks_anchor(4, &[5; 32], 1_700_000_000_000, &mac));
    assert!(!k.checks_anchor(4, &[5; 32], 1_700_000_000_001, &mac));
}

#[test]
fn canonical_bytes_piece_by_piece_are_the_gathered_bytes() {
    for row in [full_row(), sparse_row()] {
        let mut pieces = Vec::new();
        row.canonical_into(&mut |b| pieces.extend_from_slice(b));
        assert_eq!(pieces, row.canonical());
        assert!(pieces.starts_with(b"tessera/audit-entry/v1"));
    }
}

#[test]
fn clip_agrees_with_its_definition() {
    let texts = [
        "",
        "system",
        "a\u{7}b",
        "line\nbreak",
        "\u{85}next-line",
        "del\u{7f}",
        "nul\0",
        "ééééé",
        "日本語のテキスト",
        "\u{1b}[31mred",
        "émoji 🎉 mixed",
        "line\u{2028}separator\u{2029}",
        "evil\u{202E}txt.exe",
        "isolate\u{2066}x\u{2069}",
    ];
    for text in texts {
        for max in 0..=text.len() + 2 {
            assert_eq!(clip(text, max), replace_and_cut(text, max), "{text:?} at {max}");
        }
    }
    let long = "x".repeat(300);
    assert_eq!(clip(&long, MAX_AUDIT_TEXT).len(), MAX_AUDIT_TEXT);
}

/// Review note: a line separator or a bidirectional override from a caller without a credential
/// reached the trail's readers as it was (only control characters were replaced).
#[test]
fn separators_and_bidirectional_controls_are_replaced() {
    for c in ['\u{2028}', '\u{2029}', '\u{200E}', '\u{200F}', '\u{202A}', '\u{202E}', '\u{2066}', '\u{2069}']
    {
        let text = format!("a{c}b");
        assert_eq!(clip(&text, 64), "a\u{FFFD}b", "{:?}", c);
    }
    assert_eq!(clip("plain ünïcode", 64), "plain ünïcode");
}
