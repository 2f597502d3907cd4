//! One attempt to obtain a certificate: directory, account, order,
//! authorizations (arming challenge answers), finalization and download, each
//! request sent again after a refused nonce; and how ACME errors are told.

use super::*;

/// Condense an ACME error: the problem type and detail when the CA sent one.
pub(super) fn describe(e: &AcmeError) -> String {
    let text = e.to_string();
    let unescaped = text.replace("\\\"", "\"").replace("\\n", " ");
    let Some(start) = unescaped.find("urn:ietf:params:acme:error:") else {
        return text;
    };
    let kind: String = unescaped[start + "urn:ietf:params:acme:error:".len()..]
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric())
        .collect();
    let status = unescaped
        .split("non 2xx http status: ")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .map(|s| format!("HTTP {s} "))
        .unwrap_or_default();
    let detail = unescaped
        .split("\"detail\":")
        .nth(1)
        .and_then(|s| s.trim_start().strip_prefix('"'))
        .and_then(|s| s.split('"').next())
        .unwrap_or("");
    format!("{status}{kind}: {detail}")
}

pub(super) fn is_bad_nonce(e: &AcmeError) -> bool {
    e.to_string()
        .contains("urn:ietf:params:acme:error:badNonce")
}

pub(super) fn problem(p: &Option<Problem>) -> String {
    match p {
        Some(p) => format!(
            "{}: {}",
            p.typ
                .as_deref()
                .unwrap_or("")
                .trim_start_matches("urn:ietf:params:acme:error:"),
            p.detail.as_deref().unwrap_or("")
        ),
        None => "no reason given".into(),
    }
}

/// RFC 7638 thumbprint of the account's P-256 key, base64url.
pub(super) fn jwk_thumbprint(account: &Account) -> String {
    use aws_lc_rs::signature::KeyPair as _;
    let pk = account.key_pair.public_key().as_ref();
    let (x, y) = pk[1..].split_at(32);
    let jwk = format!(
        r#"{{"crv":"P-256","kty":"EC","x":"{}","y":"{}"}}"#,
        BASE64_URL_SAFE_NO_PAD.encode(x),
        BASE64_URL_SAFE_NO_PAD.encode(y)
    );
    BASE64_URL_SAFE_NO_PAD.encode(Sha256::digest(jwk.as_bytes()))
}

impl AcmeManager {
    /// One request to the CA, sent again (with a fresh nonce) when the CA refuses the nonce.
    pub(super) async fn call<T, F, Fut>(&self, what: &str, mut f: F) -> Result<T>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, AcmeError>>,
    {
        let mut attempt = 1;
        loop {
            match tokio::time::timeout(HTTP_TIMEOUT, f()).await {
                Err(_) => bail!(
                    "{what}: no answer from the CA within {}s",
                    HTTP_TIMEOUT.as_secs()
                ),
                Ok(Ok(v)) => return Ok(v),
                Ok(Err(e)) if is_bad_nonce(&e) && attempt < BAD_NONCE_TRIES => {
                    self.metrics.acme_bad_nonce_retries.inc();
                    tracing::info!(
                        request = what,
                        attempt,
                        "ACME: the CA refused the nonce (badNonce); sending the request again with a fresh one"
                    );
                    attempt += 1;
                }
                Ok(Err(e)) => bail!("{what}: {}", describe(&e)),
            }
        }
    }

    pub(super) fn account_key(&self) -> Result<Vec<u8>> {
        if let Some(pem) = read_if_exists(&self.account_file)? {
            let key = rustls_pki_types::PrivatePkcs8KeyDer::from_pem_slice(&pem).map_err(|e| {
                anyhow!(
                    "the cached account key {} is not a PKCS#8 PEM key: {e}",
                    self.account_file.display()
                )
            })?;
            tracing::info!(file = %self.account_file.display(), "ACME: using the cached account key");
            return Ok(key.secret_pkcs8_der().to_vec());
        }
        let der = Account::generate_key_pair();
        let pem = rustls_pki_types::PrivatePkcs8KeyDer::from(der.clone());
        let text = pem_encode("PRIVATE KEY", pem.secret_pkcs8_der());
        write_private(&self.account_file, text.as_bytes())?;
        tracing::info!(file = %self.account_file.display(), "ACME: created a new account key and stored it in the cache");
        Ok(der)
    }

    /// Directory, account, order, authorizations, finalization, download; then
    /// store the certificate and put it into service.
    pub(super) async fn obtain(&self) -> Result<()> {
        let s = &self.s;
        let client = &self.client;
        tracing::info!(directory = %s.directory, "ACME: fetching the directory");
        let directory = self
            .call(&format!("fetching the directory {}", s.directory), || {
                Directory::discover(client, &s.directory)
            })
            .await?;
        let key = self.account_key()?;
        tracing::info!(contact = ?s.contact, "ACME: registering the account (or finding the existing one)");
        let account = self
            .call("newAccount", || {
                Account::create_with_keypair(client, directory.clone(), &s.contact, &key)
            })
            .await?;
        tracing::info!(account = %account.kid, "ACME: account ready");
        let thumbprint = jwk_thumbprint(&account);

        let cert_key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let mut params = rcgen::CertificateParams::new(s.domains.clone())?;
        params.distinguished_name = rcgen::DistinguishedName::new();
        let csr = params.serialize_request(&cert_key)?;

        let (order_url, mut order) = self
            .call("newOrder", || account.new_order(client, s.domains.clone()))
            .await?;
        self.metrics.acme_orders.inc();
        tracing::info!(order = %order_url, domains = ?s.domains, "ACME: order placed");
        let mut delay = Duration::from_millis(500);
        let mut processing_since: Option<Instant> = None;
        loop {
            match order.status {
                OrderStatus::Pending => {
                    for url in &order.authorizations {
                        self.authorize(&account, url, &thumbprint).await?;
                    }
                    order = self
                        .call("order", || account.order(client, &order_url))
                        .await?;
                    if matches!(order.status, OrderStatus::Pending) {
                        bail!("the order is still pending after every authorization succeeded");
                    }
                }
                OrderStatus::Ready => {
                    tracing::info!(
                        "ACME: every name is validated; finalizing the order (sending the CSR)"
                    );
                    let finalize = order.finalize.clone();
                    order = self
                        .call("finalize", || {
                            account.finalize(client, &finalize, csr.der())
                        })
                        .await?;
                }
                OrderStatus::Processing => {
                    let since = *processing_since.get_or_insert_with(Instant::now);
                    if since.elapsed() > AUTH_TIMEOUT {
                        bail!(
                            "the CA did not issue the certificate within {}s",
                            AUTH_TIMEOUT.as_secs()
                        );
                    }
                    tracing::info!("ACME: waiting for the CA to issue the certificate");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(5));
                    order = self
                        .call("order", || account.order(client, &order_url))
                        .await?;
                }
                OrderStatus::Valid { certificate } => {
                    tracing::info!(url = %certificate, "ACME: certificate issued; downloading it");
                    let chain = self
                        .call("certificate", || account.certificate(client, &certificate))
                        .await?;
                    let bundle = format!("{}\n{}", cert_key.serialize_pem(), chain);
                    let (ck, info) = parse_bundle(bundle.as_bytes(), &self.provider)
                        .context("the certificate the CA issued is not usable")?;
                    write_private(&self.cert_file, bundle.as_bytes())
                        .context("storing the certificate in the cache")?;
                    tracing::info!(
                        serial = %info.serial,
                        not_before = %rfc3339(info.not_before),
                        expires = %rfc3339(info.not_after),
                        renewal_due = %rfc3339(self.renew_at(&info)),
                        file = %self.cert_file.display(),
                        "ACME: new certificate stored in the cache and in service; new handshakes use it"
                    );
                    self.deploy(ck, info);
                    return Ok(());
                }
                OrderStatus::Invalid => {
                    bail!("the CA marked the order invalid: {}", problem(&order.error))
                }
            }
        }
    }

    pub(super) async fn authorize(
        &self,
        account: &Account,
        url: &str,
        thumbprint: &str,
    ) -> Result<()> {
        let client = &self.client;
        let auth = self
            .call("authorization", || account.auth(client, url))
            .await?;
        let Identifier::Dns(domain) = &auth.identifier;
        match auth.status {
            AuthStatus::Valid => {
                tracing::info!(domain = %domain, "ACME: authorization already valid");
                return Ok(());
            }
            AuthStatus::Pending => {}
            other => bail!("authorization for {domain} is {other:?}"),
        }
        let kind = self.s.challenge;
        let wanted = match kind {
            ChallengeType::Http01 => AcmeChallenge::Http01,
            ChallengeType::TlsAlpn01 => AcmeChallenge::TlsAlpn01,
        };
        let challenge = auth
            .challenges
            .iter()
            .find(|c| c.typ == wanted)
            .with_context(|| format!("the CA offers no {} challenge for {domain}", kind.name()))?;
        let key_auth = format!("{}.{thumbprint}", challenge.token);
        let _armed = self.arm(kind, domain, &challenge.token, &key_auth)?;
        let answered_by = match (kind, self.s.challenge_listener, self.s.http_listener) {
            (ChallengeType::TlsAlpn01, Some(a), _) => format!("challenge listener {a}"),
            (ChallengeType::TlsAlpn01, None, _) => "the NTS-KE listener".to_string(),
            (ChallengeType::Http01, _, Some(a)) => format!("HTTP listener {a}"),
            (ChallengeType::Http01, _, None) => "nothing".to_string(),
        };
        tracing::info!(
            domain = %domain,
            challenge = kind.name(),
            answered_by = %answered_by,
            "ACME: challenge ready; asking the CA to validate"
        );
        let challenge_url = challenge.url.clone();
        self.call("challenge", || account.challenge(client, &challenge_url))
            .await?;
        let start = Instant::now();
        let mut delay = Duration::from_millis(500);
        loop {
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(5));
            let auth = self
                .call("authorization", || account.auth(client, url))
                .await?;
            match auth.status {
                AuthStatus::Pending => {
                    if start.elapsed() > AUTH_TIMEOUT {
                        bail!(
                            "the CA did not validate {domain} within {}s",
                            AUTH_TIMEOUT.as_secs()
                        );
                    }
                    tracing::debug!(domain = %domain, "ACME: validation still pending");
                }
                AuthStatus::Valid => {
                    tracing::info!(domain = %domain, challenge = kind.name(), "ACME: authorization valid");
                    return Ok(());
                }
                other => {
                    let why = auth
                        .challenges
                        .iter()
                        .find(|c| c.typ == wanted)
                        .map(|c| problem(&c.error))
                        .unwrap_or_else(|| "no reason given".into());
                    bail!(
                        "the CA could not validate {domain} with {} ({other:?}): {why}",
                        kind.name()
                    );
                }
            }
        }
    }

    /// Offer a challenge answer, in memory and in the shared cache directory.
    pub(super) fn arm(
        &self,
        kind: ChallengeType,
        domain: &str,
        token: &str,
        key_auth: &str,
    ) -> Result<Armed<'_>> {
        let r = &self.resolver;
        match kind {
            ChallengeType::Http01 => {
                if !valid_token(token) {
                    bail!("the CA sent a malformed challenge token {token:?}");
                }
                let file = r.http01_file(token);
                lock(&r.http01).insert(token.to_string(), key_auth.to_string());
                let armed = Armed {
                    resolver: r,
                    kind,
                    key: token.to_string(),
                    file,
                };
                if let Err(e) = write_private(&armed.file, key_auth.as_bytes()) {
                    tracing::warn!(
                        "ACME: cannot share the challenge answer with other replicas: {e:#}"
                    );
                }
                Ok(armed)
            }
            ChallengeType::TlsAlpn01 => {
                let pem = tls_alpn_cert(domain, key_auth)?;
                let ck = challenge_key(pem.as_bytes(), &self.provider)?;
                let file = r.tls_alpn_file(domain);
                lock(&r.tls_alpn).insert(domain.to_string(), Arc::new(ck));
                let armed = Armed {
                    resolver: r,
                    kind,
                    key: domain.to_string(),
                    file,
                };
                if let Err(e) = write_private(&armed.file, pem.as_bytes()) {
                    tracing::warn!(
                        "ACME: cannot share the challenge answer with other replicas: {e:#}"
                    );
                }
                Ok(armed)
            }
        }
    }
}
