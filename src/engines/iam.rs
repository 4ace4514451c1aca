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
use crate::http::Client;
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
            Err(status_error(&answer))
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
        #[derive(Deserialize)]
        struct Existing {
            org: String,
            admin: ExistingAdmin,
        }
        #[derive(Deserialize)]
        struct ExistingAdmin {
            name: String,
        }
        let body = json!({"org": org, "admin": {"name": admin, "public_key": public_key}});
        let answer = self
            .http
            .send(Method::POST, url, Some(&body), Some(token))
            .await?;
        match answer.status {
            StatusCode::OK | StatusCode::CREATED => Ok(Setup::Created),
            StatusCode::CONFLICT => {
                let existing: Existing = answer.labelled_json()?;
                if existing.org == org && existing.admin.name == admin {
                    Ok(Setup::AlreadyDone)
                } else {
                    Err(Error::Conflict(format!(
                        "IAM at {url} was already set up for organization {:?} with admin {:?}, \
                         not {org:?} with {admin:?}: every node's `iam.org` and `iam.admin.name` \
                         must agree",
                        existing.org, existing.admin.name
                    )))
                }
            }
            _ => Err(status_error(&answer)),
        }
    }
}
