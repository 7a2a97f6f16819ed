//! The audit trail: one event per decision and change, tamper-evident, never a secret.

use serde_json::Value;

use crate::support::*;

/// One request with `key` (200), then one without (401), on the default echo route.
async fn allowed_then_denied(s: &Server, key: &str) {
    assert_eq!(get_key(s, "/echo/1", key).await.status(), 200);
    let without = client().get(s.url("/echo/1")).send().await.unwrap();
    assert_eq!(without.status(), 401);
}

#[tokio::test]
async fn decisions_and_changes_are_audited_and_new_addresses_noticed() {
    let s = Server::start(None);
    let (id, key) = s.create_key("audited", "read:echo");
    allowed_then_denied(&s, &key).await;
    let allow = audit_events_eventually(&s, "outcome=allow").await[0].clone();
    assert_eq!(allow["kind"], "auth.decision");
    assert_eq!(allow["credential_id"], id.as_str());
    assert_eq!(allow["route"], "echo");
    assert_eq!(allow["scheme"], "api_key");
    assert_eq!(allow["client_ip"], "127.0.0.1");
    assert!(allow["request_id"].is_string());
    let deny = audit_events_eventually(&s, "outcome=deny").await[0].clone();
    assert_eq!(deny["reason"], "missing_credentials");
    let created = audit_events(&s, "kind=api_key.created").await;
    assert_eq!(created[0]["actor"], "admin-token");
    assert_eq!(created[0]["client_ip"], "127.0.0.1", "who: from where");
    assert_eq!(created[0]["detail"]["name"], "audited");
    let new_ip = audit_events_eventually(&s, "kind=api_key.new_ip").await[0].clone();
    assert_eq!(new_ip["credential_id"], id.as_str());
    // Only once per address.
    assert_eq!(get_key(&s, "/echo/2", &key).await.status(), 200);
    let shown = s
        .eventually("last_used_at", || async {
            let v = s.cli_json(&["keys", "show", &id]);
            v["last_used_at"].is_string().then_some(v)
        })
        .await;
    assert_eq!(shown["last_used_ip"], "127.0.0.1");
    assert_eq!(audit_events(&s, "kind=api_key.new_ip").await.len(), 1);

    let (code, out, _) = s.cli(&["audit", "verify"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("intact"), "{out}");
    // The file sink holds the same chain.
    let sink = std::fs::read_to_string(s.data_dir().join("audit.jsonl")).unwrap();
    let first: Value = serde_json::from_str(sink.lines().next().unwrap()).unwrap();
    assert_eq!(first["seq"], 1);
    assert!(first["hash"].as_str().unwrap().len() == 64);
}

/// Edits the stored trail the way someone with write access to the database file could:
/// through the store's own block format. Admin changes are stored durably one at a time, so
/// event n is alone in the block at `first_seq` n.
async fn tamper(db: &std::path::Path, what: &str) {
    use portcullis_store::audit_block::{decode, encode, Record};
    use sqlx::{Connection, Row};
    let mut c = sqlx::SqliteConnection::connect(&format!("sqlite://{}", db.display()))
        .await
        .unwrap();
    let mut blocks = Vec::new();
    for seq in [2i64, 3] {
        let row = sqlx::query("SELECT events FROM audit_blocks WHERE first_seq = ?1")
            .bind(seq)
            .fetch_one(&mut c)
            .await
            .unwrap();
        let mut records = decode(row.get::<&[u8], _>("events")).unwrap();
        assert_eq!(records.len(), 1);
        blocks.push(records.remove(0));
    }
    let put = |seq: i64, r: &Record| {
        sqlx::query("UPDATE audit_blocks SET events = ?1 WHERE first_seq = ?2")
            .bind(encode(&[r.sealed()]).unwrap().bytes)
            .bind(seq)
    };
    match what {
        "edited" => {
            let mut r = blocks[0].clone();
            assert_eq!(r.fields.kind, "api_key.created");
            r.fields.kind = "api_key.creatad".into();
            put(2, &r).execute(&mut c).await.unwrap();
        }
        "removed" => {
            sqlx::query("DELETE FROM audit_blocks WHERE first_seq = 2")
                .execute(&mut c)
                .await
                .unwrap();
        }
        "reordered" => {
            // Swap events 2 and 3, renumbered so that the seq sequence stays contiguous.
            let (mut two, mut three) = (blocks[0].clone(), blocks[1].clone());
            (two.seq, three.seq) = (3, 2);
            put(2, &three).execute(&mut c).await.unwrap();
            put(3, &two).execute(&mut c).await.unwrap();
        }
        other => panic!("no tampering called {other}"),
    }
    c.close().await.unwrap();
}

#[tokio::test]
async fn audit_verify_finds_edited_removed_and_reordered_events() {
    for what in ["edited", "removed", "reordered"] {
        let s = Server::start(None);
        for n in 0..4 {
            s.create_key(&format!("k{n}"), "read:echo");
        }
        let (code, _, _) = s.cli(&["audit", "verify"]);
        assert_eq!(code, 0);
        let stopped = s.kill9();
        tamper(&stopped.dir.join("data").join("portcullis.db"), what).await;
        let s = stopped.start(None);
        let (code, out, err) = s.cli(&["audit", "verify"]);
        assert_eq!(code, 1, "{what}: {out}{err}");
        assert!(out.contains("BROKEN"), "{what}: {out}");
        // The message names what was done (ChainError's texts say edited/removed/reordered).
        assert!(out.contains(what), "{what}: {out}");
    }
}

#[tokio::test]
async fn no_secret_reaches_logs_audit_or_disk() {
    let s = Server::start(Some("[audit]\nsink = \"stdout\"\n"));
    let (id1, k1) = s.create_key("s1", "read:echo");
    let (_, k2) = s.create_key("s2", "read:echo");
    let rot = s.cli_json(&["keys", "rotate", &id1, "--grace", "1h"]);
    let k3 = rot["key"].as_str().unwrap().to_string();
    s.cli_json(&["keys", "revoke", &id1]);
    for k in [&k1, &k2, &k3] {
        let _ = get_key(&s, "/echo/x", k).await;
        let _ = client()
            .get(s.url("/echo/x"))
            .bearer_auth(k)
            .send()
            .await
            .unwrap();
        let _ = get_key(&s, "/nope", k).await;
        let _ = get_key(&s, "/echo/x", &format!("{k}x")).await;
    }
    let token = s.token();
    let all_events = s
        .eventually("events", || async {
            let e = audit_events(&s, "limit=1000").await;
            (e.len() >= 12).then_some(e)
        })
        .await;
    let audit_text = serde_json::to_string(&all_events).unwrap();
    let mut s = s;
    s.stop();
    let output = s.output();
    assert!(
        output.contains("\"kind\":\"auth.decision\""),
        "stdout sink carries events"
    );
    let mut files = String::new();
    for entry in std::fs::read_dir(s.data_dir()).unwrap() {
        let p = entry.unwrap().path();
        if p.file_name().unwrap() != "admin.token" {
            files.push_str(&String::from_utf8_lossy(&std::fs::read(&p).unwrap()));
        }
    }
    for secret in [&k1, &k2, &k3, &token] {
        let body = &secret[secret.len() - 20..];
        assert!(!output.contains(body), "a secret reached the logs");
        assert!(
            !audit_text.contains(body),
            "a secret reached the audit trail"
        );
        assert!(!files.contains(body), "a secret reached the data directory");
    }
}

/// `logrotate` renames the audit file and sends SIGUSR1: later events go to a new file at the
/// configured path; none is lost, repeated or split between the two.
#[cfg(unix)]
#[tokio::test]
async fn sigusr1_reopens_the_audit_file_after_a_rotation() {
    let s = Server::start(None); // the default sink: <data-dir>/audit.jsonl
    let path = s.data_dir().join("audit.jsonl");
    let rotated = s.data_dir().join("audit.jsonl.1");
    // An admin change is stored and written before the API answers.
    s.create_key("before", "read:echo");
    std::fs::rename(&path, &rotated).unwrap();
    assert!(s.signal("USR1"), "kill -USR1 failed");
    // The signal is handled asynchronously: changes made meanwhile still go to the old file.
    let mut n = 0;
    s.eventually("a new audit file", || {
        n += 1;
        s.create_key(&format!("after{n}"), "read:echo");
        let p = path.clone();
        async move { p.exists().then_some(()) }
    })
    .await;
    let lines = |p: &std::path::Path| -> Vec<Value> {
        std::fs::read_to_string(p)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).expect("whole JSON lines"))
            .collect()
    };
    let (old, new) = (lines(&rotated), lines(&path));
    assert!(!new.is_empty(), "the new file holds the later events");
    assert!(
        old.iter().any(|e| e["kind"] == "api_key.created"),
        "the old file holds the first change"
    );
    // One run of sequence numbers across both files, in order: nothing lost or repeated.
    let seqs: Vec<i64> = old
        .iter()
        .chain(&new)
        .map(|e| e["seq"].as_i64().unwrap())
        .collect();
    let first = seqs[0];
    assert_eq!(seqs, (first..first + seqs.len() as i64).collect::<Vec<_>>());
    // And the server is still up and serving.
    let (code, _, _) = s.cli(&["keys", "list"]);
    assert_eq!(code, 0);
}

/// A rotation script may signal a server that writes no audit file: it must not stop it
/// (SIGUSR1's default action would).
#[cfg(unix)]
#[tokio::test]
async fn sigusr1_does_not_stop_a_server_without_an_audit_file() {
    let mut s = Server::start(Some("[audit]\nsink = \"none\"\n"));
    assert!(s.signal("USR1"), "kill -USR1 failed");
    // Once the handler has said so, the signal was taken by it, not by the default action
    // (termination).
    s.eventually("the SIGUSR1 handler's log line", || {
        let seen = s.output().contains("SIGUSR1: no audit file to reopen");
        async move { seen.then_some(()) }
    })
    .await;
    assert!(s.child.try_wait().unwrap().is_none(), "the server stopped");
    let (code, _, _) = s.cli(&["keys", "list"]);
    assert_eq!(code, 0);
}

/// Retention at start: a trail whose events are all older than 90 days (the default) loses
/// all but its newest stored block, records that as an `audit.pruned` event, and still
/// verifies, from the anchor.
#[tokio::test]
async fn retention_removes_old_blocks_records_it_and_the_rest_verifies() {
    use portcullis_store::conformance::{append, sample_event};
    use portcullis_store::AuditLog as _;

    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    // Three events of November 2023, one stored block each (three appends).
    let store = portcullis_store::sqlite::SqliteStore::open(&data.join("portcullis.db"))
        .await
        .unwrap();
    let mut prev = portcullis_core::audit::GENESIS;
    for seq in 1..=3 {
        let e = sample_event(seq, prev, "auth.decision", "allow", Some("key_old"));
        append(&store, std::slice::from_ref(&e)).await.unwrap();
        prev = e.hash;
    }
    assert_eq!(store.head().await.unwrap().map(|h| h.0), Some(3));
    store.close().await;

    let s = Server::start_in(tmp.path(), None);
    let pruned = s
        .eventually("audit.pruned event", || async {
            audit_events(&s, "kind=audit.pruned")
                .await
                .into_iter()
                .next()
        })
        .await;
    assert_eq!(pruned["actor"], "system:retention");
    assert_eq!(
        pruned["detail"]["events"], 2,
        "the newest block stays: {pruned}"
    );
    assert_eq!(pruned["detail"]["through_seq"], 2);
    assert_eq!(pruned["seq"], 4, "chained after the kept event");
    let left: Vec<i64> = audit_events(&s, "limit=100")
        .await
        .iter()
        .map(|e| e["seq"].as_i64().unwrap())
        .collect();
    assert!(!left.contains(&1) && !left.contains(&2), "{left:?}");
    assert!(left.contains(&3), "{left:?}");

    let v = s.cli_json(&["audit", "verify"]);
    assert_eq!(v["ok"], true, "{v}");
    assert_eq!(v["pruned_through"], 2, "{v}");
    let (code, out, _) = s.cli(&["audit", "verify"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("events 1 to 2 were removed"), "{out}");
    s.eventually("the retention log line", || {
        let seen = s.output().contains("audit retention removed old events");
        async move { seen.then_some(()) }
    })
    .await;
}

/// `audit.decisions = "denials"`: allowed requests leave no event, denials and admin changes
/// still do.
#[tokio::test]
async fn only_denials_are_audited_when_configured() {
    let s = Server::start(Some("[audit]\ndecisions = \"denials\"\n"));
    let (_, key) = s.create_key("quiet", "read:echo");
    allowed_then_denied(&s, &key).await;
    // The denial came after the allowed request: once it is stored, so would the other be.
    let deny = s
        .eventually("deny event", || async {
            audit_events(&s, "outcome=deny").await.into_iter().next()
        })
        .await;
    assert_eq!(deny["reason"], "missing_credentials");
    assert!(audit_events(&s, "outcome=allow").await.is_empty());
    assert_eq!(audit_events(&s, "kind=api_key.created").await.len(), 1);
}
