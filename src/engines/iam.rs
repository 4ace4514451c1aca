//! IAM's initial setup: the cluster's first organization and admin principal, created once by
//! whichever node gets there first.
//!
//! ```text
//! GET  {iam}/health          -> 200
//! POST {iam}/admin/bootstrap {"org": NAME, "admin": {"name": NAME, "public_key": PEM}}
//!      (Authorization: Bearer <bootstrap token>)
//!      -> 201 created; 409 {"org": NAME, "admin": {"name": NAME}} already bootstrapped
//! ```

use hyper::{Method, StatusCode};
use serde::Deserialize;
use serde_json::json;
use url::Url;

use super::{Error, status_error};

/// What a 401/403 from IAM asks the operator to check.
const CREDENTIALS: &str = "`iam.bootstrap_token_file` and `tls.cert`";
use crate::http::{Answer, Client};
use crate::secrets::Secret;

/// What the initial setup came to.
#[derive(Debug, PartialEq, Eq)]
pub enum Setup {
    Created,
    /// Another node did it first, with the same organization and admin.
    AlreadyDone,
}

pub struct Iam {
    http: Client,
}

impl Iam {
    pub fn new(http: Client) -> Self {
        Iam { http }
    }

    /// `Ok` on 200: IAM is up (it serves only when its flaredb backend answers).
    pub async fn reachable(&self, health_url: &Url) -> Result<(), Error> {
        let answer = self.http.get(health_url).await?;
        if answer.status.is_success() {
            Ok(())
        } else {
            Err(status_error(&answer, CREDENTIALS))
        }
    }

    pub async fn bootstrap(
        &self,
        url: &Url,
        token: &Secret,
        org: &str,
        admin: &str,
        public_key: &str,
    ) -> Result<Setup, Error> {
        let body = json!({"org": org, "admin": {"name": admin, "public_key": public_key}});
        let answer = self
            .http
            .send(Method::POST, url, Some(&body), Some(token))
            .await?;
        read_bootstrap(url, &answer, org, admin)
    }
}

/// What IAM's answer to the bootstrap means. A success is believed only when IAM names what it
/// created: a 200 from a proxy in the way, or a body flint cannot read, must not become a marker.
pub fn read_bootstrap(url: &Url, answer: &Answer, org: &str, admin: &str) -> Result<Setup, Error> {
    /// What IAM says it holds, in a 201 as in a 409.
    #[derive(Deserialize)]
    struct Existing {
        org: String,
        admin: ExistingAdmin,
    }
    #[derive(Deserialize)]
    struct ExistingAdmin {
        name: String,
    }
    let created = matches!(answer.status, StatusCode::OK | StatusCode::CREATED);
    match answer.status {
        StatusCode::OK | StatusCode::CREATED | StatusCode::CONFLICT => {
            let existing: Existing = answer.labelled_json()?;
            if existing.org == org && existing.admin.name == admin {
                Ok(if created {
                    Setup::Created
                } else {
                    Setup::AlreadyDone
                })
            } else if created {
                Err(Error::Conflict(format!(
                    "IAM at {url} answered {} for organization {:?} with admin {:?}, not \
                     {org:?} with {admin:?}",
                    answer.status, existing.org, existing.admin.name
                )))
            } else {
                Err(Error::Conflict(format!(
                    "IAM at {url} was already set up for organization {:?} with admin {:?}, \
                     not {org:?} with {admin:?}: every node's `iam.org` and `iam.admin.name` \
                     must agree",
                    existing.org, existing.admin.name
                )))
            }
        }
        _ => Err(status_error(answer, CREDENTIALS)),
    }
}
