//! The admin API itself: authentication, errors, the OpenAPI document.

use crate::support::*;

#[tokio::test]
async fn admin_api_requires_the_token_and_documents_itself() {
    let s = Server::start(None);
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(s.data_dir().join("admin.token"))
            .unwrap()
            .permissions(),
    );
    assert_eq!(mode & 0o777, 0o600, "admin.token is private");
    assert!(
        s.output().contains("admin token written to"),
        "{}",
        s.output()
    );
    assert!(
        !s.output().contains(&s.token()),
        "the token itself is never printed"
    );

    let r = client().get(s.url("/admin/v1/keys")).send().await.unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(json_of(r).await["error"], "invalid_admin_token");
    let r = client()
        .get(s.url("/admin/v1/keys"))
        .bearer_auth("pca_wrong")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let r = s.admin().get(s.url("/admin/v1/keys")).send().await.unwrap();
    assert_eq!(r.status(), 200);

    let doc = openapi_doc(&s).await;
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."), "{doc}");
    assert!(doc["paths"]["/admin/v1/keys"].is_object());

    // Bad bodies: 400 with a message, never a panic or a store detail.
    let r = s
        .admin()
        .post(s.url("/admin/v1/keys"))
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(json_of(r).await["error"], "invalid_request");
    let r = s
        .admin()
        .post(s.url("/admin/v1/keys"))
        .json(&serde_json::json!({"name": "x", "bogus": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let r = s
        .admin()
        .post(s.url("/admin/v1/keys"))
        .json(&serde_json::json!({"name": ""}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let r = s
        .admin()
        .get(s.url("/admin/v1/keys/key_doesnotexist"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let r = s
        .admin()
        .post(s.url("/admin/v1/keys/key_doesnotexist/revoke"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);

    // Restart on the same data dir keeps the same token.
    let token = s.token();
    let s2 = s.kill9().start(None);
    assert_eq!(s2.token(), token);
    assert!(!s2.output().contains("admin token written to"));
}
