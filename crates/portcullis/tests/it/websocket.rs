//! WebSocket handshakes through the gateway: judged like any request, then a tunnel to the
//! upstream, on routes that opt in.

use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};
use tokio_tungstenite::tungstenite::{Error, Message};

use crate::support::*;

/// A WebSocket upstream: its first message says what identity headers the handshake brought;
/// then it echoes every data message.
async fn ws_upstream() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut who = String::new();
                // The callback's type is the library's.
                #[allow(clippy::result_large_err)]
                let seen = |req: &Request, resp: Response| {
                    let h = req.headers();
                    who = format!(
                        "credential={} api_key_passed={}",
                        h.get("x-portcullis-credential")
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or("-"),
                        h.contains_key("x-api-key")
                    );
                    Ok(resp)
                };
                let Ok(mut ws) = tokio_tungstenite::accept_hdr_async(stream, seen).await else {
                    return;
                };
                if ws.send(Message::text(who)).await.is_err() {
                    return;
                }
                while let Some(Ok(m)) = ws.next().await {
                    if (m.is_text() || m.is_binary()) && ws.send(m).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

fn gateway_to(up: &str, extra: &str) -> Server {
    Server::start(Some(&format!(
        "{extra}\n[[routes]]\nname = \"ws\"\npath_prefix = \"/ws\"\nupstream = \"http://{up}\"\npolicy = \"api_key\"\nwebsocket = true\n\n[[routes]]\nname = \"plain\"\npath_prefix = \"/plain\"\nupstream = \"http://{up}\"\npolicy = \"api_key\"\n"
    )))
}

async fn connect(
    s: &Server,
    path: &str,
    key: Option<&str>,
) -> Result<
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>,
    Error,
> {
    let mut req = format!("ws://{}{path}", s.addr)
        .into_client_request()
        .unwrap();
    if let Some(k) = key {
        req.headers_mut().insert("x-api-key", k.parse().unwrap());
    }
    let (ws, resp) = tokio_tungstenite::connect_async(req).await?;
    assert_eq!(resp.status(), 101);
    assert!(resp.headers().contains_key("x-request-id"), "{resp:?}");
    Ok(ws)
}

async fn next_data(
    ws: &mut tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
) -> Message {
    tokio::time::timeout(std::time::Duration::from_secs(10), ws.next())
        .await
        .expect("a message in time")
        .expect("the stream goes on")
        .expect("a well-formed message")
}

#[tokio::test]
async fn a_websocket_is_authenticated_at_the_handshake_then_tunnelled() {
    let up = ws_upstream().await;
    let s = gateway_to(&up, "");
    let (id, key) = s.create_key("ws", "");
    let mut ws = connect(&s, "/ws/chat", Some(&key)).await.unwrap();
    assert_eq!(
        next_data(&mut ws).await.to_text().unwrap(),
        format!("credential={id} api_key_passed=false"),
        "the upstream sees the identity, not the key"
    );
    ws.send(Message::text("hello")).await.unwrap();
    assert_eq!(next_data(&mut ws).await.to_text().unwrap(), "hello");
    // A message larger than any buffer on the way crosses whole, both ways.
    let big: Vec<u8> = (0..600_000u32).map(|i| (i % 251) as u8).collect();
    ws.send(Message::binary(big.clone())).await.unwrap();
    assert_eq!(next_data(&mut ws).await.into_data().to_vec(), big);
    // The closing handshake goes through: the upstream's answer ends the stream.
    ws.close(None).await.unwrap();
    let rest = tokio::time::timeout(std::time::Duration::from_secs(10), async {
        let mut n = 0;
        while let Some(Ok(m)) = ws.next().await {
            assert!(m.is_close(), "{m:?}");
            n += 1;
        }
        n
    })
    .await
    .expect("the connection closes");
    assert!(rest <= 1);

    // One decision, at the handshake.
    let decisions = decisions_on(&s, &id).await;
    assert_eq!(decisions.len(), 1, "{decisions:?}");
    assert_eq!(decisions[0]["route"], "ws");
    assert_eq!(decisions[0]["outcome"], "allow");
}

#[tokio::test]
async fn a_handshake_is_refused_like_any_request_and_passes_only_where_allowed() {
    let up = ws_upstream().await;
    let s = gateway_to(&up, "");
    match connect(&s, "/ws/chat", None).await {
        Err(Error::Http(r)) => assert_eq!(r.status(), 401),
        other => panic!("without a key: {other:?}"),
    }
    match connect(&s, "/ws/chat", Some("pk_live_notakey")).await {
        Err(Error::Http(r)) => assert_eq!(r.status(), 401),
        other => panic!("with a malformed key: {other:?}"),
    }
    // A route that did not opt in passes the request without its `Upgrade`: no tunnel.
    let (_, key) = s.create_key("ws", "");
    match connect(&s, "/plain/chat", Some(&key)).await {
        Err(Error::Http(r)) => assert_ne!(r.status(), 101),
        other => panic!("on a route without websocket = true: {other:?}"),
    }
}

#[tokio::test]
async fn a_silent_websocket_is_closed_after_the_idle_timeout() {
    let up = ws_upstream().await;
    let s = gateway_to(&up, "[proxy]\nwebsocket_idle_timeout = \"1s\"\n");
    let (_, key) = s.create_key("ws", "");
    let mut ws = connect(&s, "/ws/quiet", Some(&key)).await.unwrap();
    next_data(&mut ws).await; // the upstream's greeting, then silence both ways
    assert!(ended(&mut ws).await, "the gateway closed the silent tunnel");
}

#[test]
fn websocket_on_the_builtin_echo_is_a_config_error() {
    let (code, err) = check_config(
        "[[routes]]\nname = \"e\"\nupstream = \"builtin:echo\"\npolicy = \"public\"\nwebsocket = true\n",
    );
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("portcullis.toml:5") && err.contains("websocket"),
        "{err}"
    );
}

#[tokio::test]
async fn stopping_the_server_ends_its_websockets() {
    let up = ws_upstream().await;
    let mut s = gateway_to(&up, "");
    let (_, key) = s.create_key("ws", "");
    let mut ws = connect(&s, "/ws/open", Some(&key)).await.unwrap();
    next_data(&mut ws).await;
    s.stop();
    assert!(
        s.child.try_wait().unwrap().is_some(),
        "the server stopped: {}",
        s.output()
    );
    assert!(
        !s.output().contains("connections still open"),
        "the tunnel did not hold the shutdown: {}",
        s.output()
    );
    let ended = tokio::time::timeout(std::time::Duration::from_secs(10), async {
        while let Some(Ok(_)) = ws.next().await {}
    })
    .await;
    assert!(ended.is_ok(), "the caller's side ended");
}

/// Waits until the stream ends (close frame, error or end), at most 20 s.
async fn ended(
    ws: &mut tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
) -> bool {
    tokio::time::timeout(std::time::Duration::from_secs(20), async {
        loop {
            match ws.next().await {
                None | Some(Err(_)) => return,
                Some(Ok(m)) if m.is_close() => return,
                Some(Ok(_)) => {}
            }
        }
    })
    .await
    .is_ok()
}

#[tokio::test]
async fn a_tunnel_lasts_only_as_long_as_its_credential_admits_it() {
    let up = ws_upstream().await;
    let s = Server::start(Some(&format!(
        "[proxy]\nwebsocket_recheck_interval = \"1s\"\n\n[[routes]]\nname = \"ws\"\npath_prefix = \"/ws\"\nupstream = \"http://{up}\"\npolicy = \"api_key\"\nscopes = [\"chat\"]\nwebsocket = true\n"
    )));
    // A valid key's tunnel goes on across checks.
    let (_, kept) = s.create_key("kept", "chat");
    let mut ws = connect(&s, "/ws/a", Some(&kept)).await.unwrap();
    next_data(&mut ws).await;
    tokio::time::sleep(std::time::Duration::from_millis(2500)).await;
    ws.send(Message::text("still here")).await.unwrap();
    assert_eq!(next_data(&mut ws).await.to_text().unwrap(), "still here");

    // Revoked: the open tunnel closes at the next check.
    let (revoked_id, revoked) = s.create_key("revoked", "chat");
    let mut ws = connect(&s, "/ws/b", Some(&revoked)).await.unwrap();
    next_data(&mut ws).await;
    s.cli_json(&["keys", "revoke", &revoked_id]);
    assert!(ended(&mut ws).await, "the revoked key's tunnel closed");

    // The route's scope taken away: likewise.
    let (narrowed_id, narrowed) = s.create_key("narrowed", "chat");
    let mut ws = connect(&s, "/ws/c", Some(&narrowed)).await.unwrap();
    next_data(&mut ws).await;
    s.cli_json(&["keys", "update", &narrowed_id, "--scopes", "other"]);
    assert!(ended(&mut ws).await, "the narrowed key's tunnel closed");

    for (id, reason) in [
        (&revoked_id, "credential_no_longer_valid"),
        (&narrowed_id, "insufficient_scope"),
    ] {
        let events =
            audit_events_eventually(&s, &format!("kind=auth.session_ended&credential_id={id}"))
                .await;
        assert_eq!(events[0]["reason"], reason, "{events:?}");
        assert_eq!(events[0]["route"], "ws");
    }
}
