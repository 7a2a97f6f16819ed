//! `portcullis webhook create|list|show|delete|rotate-secret|test|deliveries`: the endpoints
//! Portcullis delivers its own events to, through the admin API (like `crate::cli`).

use http::Method;
use serde_json::{json, Value};

use crate::cli::{join, s, urlencode, Api, CliError, Conn};
use crate::sign_cli::WebhookCmd;

/// Runs one endpoint-management command (not `sign` or `verify`).
pub async fn run(cmd: WebhookCmd) -> Result<(), CliError> {
    let (conn, v) = match cmd {
        WebhookCmd::Sign { .. } | WebhookCmd::Verify { .. } => {
            return Err(CliError("not an admin command".into()))
        }
        WebhookCmd::Create {
            conn,
            url,
            events,
            description,
        } => {
            let events: Vec<String> = events.into_iter().filter(|e| !e.is_empty()).collect();
            let mut body = json!({ "url": url, "events": events });
            if let Some(d) = description {
                body["description"] = Value::String(d);
            }
            let v = Api::new(&conn)?
                .call(Method::POST, "/admin/v1/webhooks", Some(body))
                .await?;
            (conn, v)
        }
        WebhookCmd::List { conn, limit, after } => {
            let mut q = format!("/admin/v1/webhooks?limit={limit}");
            if let Some(a) = after {
                q.push_str(&format!("&after={}", urlencode(&a)));
            }
            let v = Api::new(&conn)?.call(Method::GET, &q, None).await?;
            if conn.json {
                println!("{v}");
                return Ok(());
            }
            println!("{:<26} {:<9} {:<40} EVENTS", "ID", "STATUS", "URL");
            for e in v["webhooks"].as_array().into_iter().flatten() {
                println!(
                    "{:<26} {:<9} {:<40} {}",
                    s(&e["id"]),
                    s(&e["status"]),
                    s(&e["url"]),
                    join(&e["events"])
                );
            }
            return Ok(());
        }
        WebhookCmd::Show { conn, id } => {
            let path = format!("/admin/v1/webhooks/{}", urlencode(&id));
            let v = Api::new(&conn)?.call(Method::GET, &path, None).await?;
            (conn, v)
        }
        WebhookCmd::Delete { conn, id } => {
            let path = format!("/admin/v1/webhooks/{}", urlencode(&id));
            Api::new(&conn)?.call(Method::DELETE, &path, None).await?;
            if conn.json {
                println!("{}", json!({ "deleted": id }));
            } else {
                println!("deleted {id}");
            }
            return Ok(());
        }
        WebhookCmd::RotateSecret { conn, id } => {
            let path = format!("/admin/v1/webhooks/{}/rotate-secret", urlencode(&id));
            let v = Api::new(&conn)?.call(Method::POST, &path, None).await?;
            (conn, v)
        }
        WebhookCmd::Test { conn, id } => {
            let path = format!("/admin/v1/webhooks/{}/test", urlencode(&id));
            let v = Api::new(&conn)?.call(Method::POST, &path, None).await?;
            if conn.json {
                println!("{v}");
            } else {
                println!(
                    "test delivery {} queued (see `portcullis webhook deliveries {id}`)",
                    s(&v["id"])
                );
            }
            return Ok(());
        }
        WebhookCmd::Deliveries {
            conn,
            id,
            limit,
            after,
        } => {
            let mut q = format!(
                "/admin/v1/webhooks/{}/deliveries?limit={limit}",
                urlencode(&id)
            );
            if let Some(a) = after {
                q.push_str(&format!("&after={}", urlencode(&a)));
            }
            let v = Api::new(&conn)?.call(Method::GET, &q, None).await?;
            if conn.json {
                println!("{v}");
                return Ok(());
            }
            println!(
                "{:<27} {:<20} {:<10} {:>8} {:>6}  {:<24} LAST ERROR",
                "ID", "TYPE", "STATUS", "ATTEMPTS", "HTTP", "CREATED"
            );
            for d in v["deliveries"].as_array().into_iter().flatten() {
                println!(
                    "{:<27} {:<20} {:<10} {:>8} {:>6}  {:<24} {}",
                    s(&d["id"]),
                    s(&d["type"]),
                    s(&d["status"]),
                    s(&d["attempts"]),
                    s(&d["last_status"]),
                    s(&d["created_at"]),
                    s(&d["last_error"])
                );
            }
            return Ok(());
        }
    };
    print_endpoint(&conn, &v);
    Ok(())
}

fn print_endpoint(conn: &Conn, v: &Value) {
    if conn.json {
        println!("{v}");
        return;
    }
    if let Some(secret) = v["secret"].as_str() {
        println!("{secret}");
        println!("The secret above is shown only once: store it now.");
    }
    println!("id:          {}", s(&v["id"]));
    println!("url:         {}", s(&v["url"]));
    println!("events:      {}", join(&v["events"]));
    println!("status:      {}", s(&v["status"]));
    if let Some(d) = v["description"].as_str().filter(|d| !d.is_empty()) {
        println!("description: {d}");
    }
    if let Some(t) = v["previous_secret_expires_at"].as_str() {
        println!("previous secret signs too until {t}");
    }
    if let Some(r) = v["disabled_reason"].as_str() {
        println!("disabled:    {r}");
    }
}
