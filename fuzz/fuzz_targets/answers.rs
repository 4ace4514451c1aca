//! What flint makes of any answer from the etcd gateway, the chainfire/flaredb admin API and
//! IAM: never a panic, never a success it cannot read, never a hop to plain http elsewhere.
#![no_main]

use flint::engines::admin::{self, Added, MemberList};
use flint::engines::{etcd, iam};
use flint::http::Answer;
use hyper::StatusCode;
use libfuzzer_sys::fuzz_target;
use url::Url;

fuzz_target!(|data: &[u8]| {
    if data.len() < 4 {
        return;
    }
    let status = StatusCode::from_u16(100 + u16::from_be_bytes([data[0], data[1]]) % 500)
        .expect("100..599 is a status");
    let content_type = match data[2] % 3 {
        0 => None,
        1 => Some("application/json".to_owned()),
        _ => Some("text/html".to_owned()),
    };
    let allow_plaintext = data[3] & 1 == 1;
    let rest = &data[4..];
    // The Location header takes the bytes up to the first newline, the body the rest.
    let (location, body) = match rest.iter().position(|&b| b == b'\n') {
        Some(i) => (
            Some(String::from_utf8_lossy(&rest[..i]).into_owned()),
            &rest[i + 1..],
        ),
        None => (None, rest),
    };
    let url = Url::parse("https://node01.example.com:2379/admin/member/add").unwrap();
    let answer = Answer {
        url: url.to_string(),
        status,
        retry_after: None,
        location,
        content_type,
        body: bytes::Bytes::copy_from_slice(body),
    };

    // What a member list may put into etcd.env: one value each, no line break, no separator of
    // `ETCD_INITIAL_CLUSTER`'s `name=url,...`.
    if let Ok(list) = etcd::interpret::<etcd::MemberList>(&url, &answer) {
        for member in &list.members {
            if flint::config::env_member_name(&member.name) {
                assert!(!member.name.contains(['\n', '=', ',']), "{:?}", member.name);
            }
            for peer in &member.peer_urls {
                if let Some(bare) = flint::config::env_peer_url(peer) {
                    assert!(!bare.contains(['\n', '\r', '=', ',', ' ']), "{bare:?}");
                }
            }
        }
    }
    let _ = etcd::interpret::<etcd::Status>(&url, &answer);
    let _ = etcd::interpret::<etcd::AddAnswer>(&url, &answer);

    let directory = admin::Directory::default();
    if let Ok(Some(next)) = admin::next_hop(&url, &answer, allow_plaintext, &directory) {
        assert!(
            flint::config::permits(&next, allow_plaintext),
            "followed {url} to {next}"
        );
    }
    match admin::read_added(&url, &answer, "node04", "10.0.200.13:2380") {
        Ok(Added::Existing(m)) => assert!(m.id == "node04" && m.raft_addr == "10.0.200.13:2380"),
        Ok(_) => assert!(status.is_success() || status == StatusCode::CONFLICT),
        Err(_) => {}
    }
    let _ = answer.labelled_json::<MemberList>();

    let iam_url = Url::parse("https://iam.example.com:8080/admin/bootstrap").unwrap();
    if iam::read_bootstrap(&iam_url, &answer, "acme", "root").is_ok() {
        assert!(matches!(status.as_u16(), 200 | 201 | 409));
        assert!(answer.content_type.as_deref() == Some("application/json"));
    }
});
