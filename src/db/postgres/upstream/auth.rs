//! The client side of PostgreSQL authentication with a held password:
//! which method gatehouse agrees to, and the SCRAM exchange.
//!
//! Security behaviour (the server picks the method; gatehouse decides
//! whether to go along):
//! - SASL: SCRAM-SHA-256-PLUS (channel binding `tls-server-end-point`) when
//!   TLS is up and the server offers it, else SCRAM-SHA-256. The SCRAM
//!   exchange itself is postgres-protocol's (the tokio-postgres client's).
//!   Once SCRAM has started, AuthenticationOk is accepted only after the
//!   server proved it knows the password (a verified SASLFinal).
//! - MD5 only when the target says `auth = "md5"`.
//! - Cleartext only over TLS (the server was verified, the channel is
//!   encrypted); refused on `tls = "disable"`.
//! - Kerberos, GSSAPI, SSPI and unknown methods are refused.
//!
//! The password is never put in an error. Messages carrying it (or a
//! proof derived from it) are built in buffers wiped on drop.

use postgres_protocol::authentication::md5_hash;
use postgres_protocol::authentication::sasl::{
    ChannelBinding, ScramSha256, SCRAM_SHA_256, SCRAM_SHA_256_PLUS,
};
use zeroize::Zeroizing;

use super::wire::{self, Cursor};
use super::{AuthMechanism, UpstreamError};

/// What to do after an authentication request.
pub(super) enum Step {
    /// Send this message and read on.
    Send(Zeroizing<Vec<u8>>),
    /// Read on (SASLFinal verified; AuthenticationOk comes next).
    Wait,
    /// AuthenticationOk: the login succeeded.
    Authenticated,
}

enum State {
    Start,
    /// Sent the SASLInitialResponse; expecting SASLContinue.
    ScramContinue(Box<ScramSha256>),
    /// Sent the SASLResponse; expecting SASLFinal.
    ScramFinal(Box<ScramSha256>),
    /// The server's SCRAM signature verified.
    ScramDone,
    /// Sent a cleartext or MD5 password.
    PasswordSent,
}

/// One login's authentication state.
pub(super) struct Login<'a> {
    pub target: &'a str,
    pub user: Option<&'a str>,
    pub password: &'a [u8],
    pub allow_md5: bool,
    pub tls: bool,
    /// `tls-server-end-point` data when TLS is up and the certificate's
    /// hash algorithm is known.
    pub binding: Option<Vec<u8>>,
    state: State,
    /// The method used, once chosen.
    pub mechanism: AuthMechanism,
}

impl<'a> Login<'a> {
    pub fn new(
        target: &'a str,
        user: Option<&'a str>,
        password: &'a [u8],
        allow_md5: bool,
        binding: Option<Vec<u8>>,
        tls: bool,
    ) -> Self {
        Login {
            target,
            user,
            password,
            allow_md5,
            tls,
            binding,
            state: State::Start,
            mechanism: AuthMechanism::Trust,
        }
    }

    /// Handles one Authentication ('R') message body.
    pub fn on_request(&mut self, body: &[u8]) -> Result<Step, UpstreamError> {
        let mut c = Cursor::new(body);
        let code = c
            .i32()
            .ok_or_else(|| protocol("an authentication request without its code"))?;
        let state = std::mem::replace(&mut self.state, State::Start);
        match (code, state) {
            (0, State::ScramContinue(_) | State::ScramFinal(_)) => Err(protocol(
                "the server ended SCRAM without proving it knows the password",
            )),
            (0, _) => Ok(Step::Authenticated),
            (3, State::Start) => {
                if !self.tls {
                    return Err(UpstreamError::AuthMethod(format!(
                        "the server of target {} asked for the password in cleartext \
                         without TLS; refused",
                        self.target
                    )));
                }
                self.mechanism = AuthMechanism::Cleartext;
                self.state = State::PasswordSent;
                wire::password_message(self.password).map(Step::Send)
            }
            (5, State::Start) => {
                if !self.allow_md5 {
                    return Err(UpstreamError::AuthMethod(format!(
                        "the server of target {} asked for MD5 password authentication, \
                         but the target uses SCRAM; switch the server to scram-sha-256 \
                         (or set auth = \"md5\" on the target)",
                        self.target
                    )));
                }
                let salt: [u8; 4] = c
                    .rest()
                    .try_into()
                    .map_err(|_| protocol("an MD5 request without a 4-byte salt"))?;
                let user = self
                    .user
                    .ok_or_else(|| protocol("MD5 authentication needs the user parameter"))?;
                let hash = Zeroizing::new(md5_hash(user.as_bytes(), self.password, salt));
                self.mechanism = AuthMechanism::Md5;
                self.state = State::PasswordSent;
                wire::password_message(hash.as_bytes()).map(Step::Send)
            }
            (10, State::Start) => self.start_sasl(c),
            (11, State::ScramContinue(mut scram)) => {
                scram
                    .update(c.rest())
                    .map_err(|e| protocol(&format!("bad SCRAM server-first message: {e}")))?;
                let reply = wire::message(b'p', scram.message())?;
                self.state = State::ScramFinal(scram);
                Ok(Step::Send(reply))
            }
            (12, State::ScramFinal(mut scram)) => {
                scram.finish(c.rest()).map_err(|_| {
                    protocol(
                        "the server's SCRAM signature does not verify: it does not \
                         hold this login's password",
                    )
                })?;
                self.state = State::ScramDone;
                Ok(Step::Wait)
            }
            (2 | 6 | 7 | 8 | 9, _) => Err(UpstreamError::AuthMethod(format!(
                "the server of target {} asked for {} authentication, which gatehouse \
                 does not use; use scram-sha-256",
                self.target,
                match code {
                    2 => "Kerberos V5",
                    6 => "SCM credential",
                    9 => "SSPI",
                    _ => "GSSAPI",
                }
            ))),
            (code, _) => Err(protocol(&format!(
                "unexpected authentication request (code {code}) at this point of the login"
            ))),
        }
    }

    /// AuthenticationSASL: pick the mechanism, send the client-first message.
    fn start_sasl(&mut self, mut c: Cursor<'_>) -> Result<Step, UpstreamError> {
        let mut offered = Vec::new();
        while let Some(name) = c.cstr() {
            if name.is_empty() {
                break;
            }
            if offered.len() < 16 {
                offered.push(String::from_utf8_lossy(name).into_owned());
            }
        }
        let has = |m: &str| offered.iter().any(|o| o == m);
        let (mechanism, binding) = match self.binding.take() {
            Some(data) if self.tls && has(SCRAM_SHA_256_PLUS) => (
                AuthMechanism::ScramSha256Plus,
                ChannelBinding::tls_server_end_point(data),
            ),
            _ if has(SCRAM_SHA_256) => {
                // "y": we could bind but the server did not offer it (a
                // server that did would then refuse: downgrade detected).
                // "n": no TLS, or a certificate we cannot hash.
                let binding = if self.tls && !has(SCRAM_SHA_256_PLUS) {
                    ChannelBinding::unrequested()
                } else {
                    ChannelBinding::unsupported()
                };
                (AuthMechanism::ScramSha256, binding)
            }
            _ => {
                return Err(UpstreamError::AuthMethod(format!(
                    "the server of target {} offers none of SCRAM-SHA-256(-PLUS) (offered: {})",
                    self.target,
                    offered.join(", ")
                )))
            }
        };
        let name = match mechanism {
            AuthMechanism::ScramSha256Plus => SCRAM_SHA_256_PLUS,
            _ => SCRAM_SHA_256,
        };
        let scram = Box::new(ScramSha256::new(self.password, binding));
        let first = wire::sasl_initial_response(name, scram.message())?;
        self.mechanism = mechanism;
        self.state = State::ScramContinue(scram);
        Ok(Step::Send(first))
    }
}

fn protocol(what: &str) -> UpstreamError {
    UpstreamError::Protocol(what.to_string())
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    fn request(code: i32, rest: &[u8]) -> Vec<u8> {
        let mut b = code.to_be_bytes().to_vec();
        b.extend_from_slice(rest);
        b
    }

    #[test]
    fn md5_is_refused_unless_the_target_allows_it() {
        let mut login = Login::new("db-1", Some("app"), b"pw", false, None, true);
        let err = match login.on_request(&request(5, &[1, 2, 3, 4])) {
            Err(e) => e,
            Ok(_) => panic!("md5 accepted"),
        };
        assert!(matches!(err, UpstreamError::AuthMethod(_)), "{err}");
        let mut login = Login::new("db-1", Some("app"), b"pw", true, None, true);
        assert!(matches!(
            login.on_request(&request(5, &[1, 2, 3, 4])),
            Ok(Step::Send(_))
        ));
        assert_eq!(login.mechanism, AuthMechanism::Md5);
    }

    #[test]
    fn cleartext_is_refused_without_tls() {
        let mut login = Login::new("db-1", Some("app"), b"pw", false, None, false);
        assert!(matches!(
            login.on_request(&request(3, &[])),
            Err(UpstreamError::AuthMethod(_))
        ));
        let mut login = Login::new("db-1", Some("app"), b"pw", false, None, true);
        match login.on_request(&request(3, &[])) {
            Ok(Step::Send(m)) => assert_eq!(&m[5..], b"pw\0"),
            _ => panic!("cleartext over TLS refused"),
        }
    }

    #[test]
    fn ok_in_the_middle_of_scram_is_refused() {
        let mut login = Login::new("db-1", Some("app"), b"pw", false, None, false);
        assert!(matches!(
            login.on_request(&request(10, b"SCRAM-SHA-256\0\0")),
            Ok(Step::Send(_))
        ));
        assert_eq!(login.mechanism, AuthMechanism::ScramSha256);
        assert!(matches!(
            login.on_request(&request(0, &[])),
            Err(UpstreamError::Protocol(_))
        ));
    }

    #[test]
    fn plus_is_chosen_with_tls_and_a_binding() {
        let mut login = Login::new("db-1", None, b"pw", false, Some(vec![1; 32]), true);
        match login.on_request(&request(10, b"SCRAM-SHA-256-PLUS\0SCRAM-SHA-256\0\0")) {
            Ok(Step::Send(m)) => {
                let body = &m[5..];
                assert!(body.starts_with(b"SCRAM-SHA-256-PLUS\0"));
                let first = &body[b"SCRAM-SHA-256-PLUS\0".len() + 4..];
                assert!(first.starts_with(b"p=tls-server-end-point,,"));
            }
            _ => panic!("no SASL initial response"),
        }
        assert_eq!(login.mechanism, AuthMechanism::ScramSha256Plus);
        let mut login = Login::new("db-1", None, b"pw", false, None, false);
        assert!(matches!(
            login.on_request(&request(10, b"SCRAM-SHA-1\0\0")),
            Err(UpstreamError::AuthMethod(_))
        ));
    }
}
