//! The time server's request-to-response function (RFC 5905 server mode and
//! RFC 8915 section 5), over byte buffers, with no allocation.
//!
//! The caller supplies the receive timestamp, the server's clock state, the
//! key ring, a nonce source and a function that reads the clock for the
//! transmit timestamp; it gets back how many bytes of the output buffer to
//! send, or why the request is dropped. A response is never longer than its
//! request.

use crate::aead::TAG_LEN;
use crate::cookie::{self, CookieError, COOKIE_NONCE_LEN};
use crate::extension_field::{field_type, Authenticator, ExtensionFields, FieldWriter, NONCE_LEN};
use crate::interleaved::{mark_receive, mark_transmit};
use crate::key_ring::KeyRing;
use crate::ntp_packet::{
    kiss, LeapIndicator, Mode, NtpHeader, NtpShort, NtpTimestamp, PacketError, HEADER_LEN,
};
use crate::nts_fields::{self, NtsFieldsError, NtsPacket};

/// Largest datagram the server looks at; longer ones are dropped.
pub const MAX_REQUEST_LEN: usize = 2048;
/// Most cookies returned in one response (one per cookie and placeholder received).
pub const MAX_COOKIES_RETURNED: usize = 8;

/// What the server says about its own clock in every response.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ServerClock {
    pub leap: LeapIndicator,
    pub stratum: u8,
    pub precision: i8,
    pub root_delay: NtpShort,
    pub root_dispersion: NtpShort,
    pub reference_id: [u8; 4],
    pub reference_timestamp: NtpTimestamp,
}

impl ServerClock {
    /// An unsynchronized server: alarm condition, stratum 16 (RFC 5905 section 7.3).
    pub fn unsynchronized(precision: i8) -> Self {
        Self {
            leap: LeapIndicator::Unsynchronized,
            stratum: 16,
            precision,
            root_delay: NtpShort(0),
            root_dispersion: NtpShort(0),
            reference_id: *b"INIT",
            reference_timestamp: NtpTimestamp::ZERO,
        }
    }
}

/// Server-wide policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServerPolicy {
    /// Answer requests that carry no NTS fields.
    pub serve_unauthenticated: bool,
    /// Requests with more extension fields than this are dropped.
    pub max_extension_fields: usize,
}

impl Default for ServerPolicy {
    fn default() -> Self {
        Self {
            serve_unauthenticated: true,
            max_extension_fields: nts_fields::DEFAULT_MAX_FIELDS,
        }
    }
}

/// Why a request gets no answer. Each is a metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DropReason {
    /// Shorter than the NTP header.
    TooShort,
    /// Longer than [`MAX_REQUEST_LEN`].
    TooLong,
    /// NTP version other than 1-4.
    BadVersion,
    /// Not a client-mode request (control, private, symmetric, broadcast, server).
    NotClientMode,
    /// Extension fields that do not parse.
    MalformedExtensions,
    /// More extension fields than the policy allows.
    TooManyExtensions,
    /// NTS fields missing, duplicated or malformed.
    MalformedNts,
    /// The authenticator did not verify with the cookie's C2S key.
    AuthenticationFailed,
    /// Plain NTP refused by policy.
    UnauthenticatedRefused,
    /// The output buffer could not hold the response (cannot happen with a request-sized buffer).
    Internal,
    /// Plain NTP over the client's rate, its RATE kiss for this interval already sent.
    RateLimited,
    /// NTS over the client's rate: dropped silently, since an NTS client must
    /// ignore an unauthenticated kiss and an authenticated one would cost the
    /// cryptography the limit exists to save.
    RateLimitedNts,
    /// Waited in the socket queue longer than the configured maximum age.
    TooOld,
    /// NTS request while the server's clock is unsynchronized: its answer would
    /// be useless (leap indicator 3), and silence sends the NTS client back to
    /// NTS-KE once its cookies run out, which hands it a synchronized server.
    Unsynchronized,
}

impl DropReason {
    pub const ALL: [DropReason; 14] = [
        Self::TooShort,
        Self::TooLong,
        Self::BadVersion,
        Self::NotClientMode,
        Self::MalformedExtensions,
        Self::TooManyExtensions,
        Self::MalformedNts,
        Self::AuthenticationFailed,
        Self::UnauthenticatedRefused,
        Self::Internal,
        Self::RateLimited,
        Self::RateLimitedNts,
        Self::TooOld,
        Self::Unsynchronized,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Self::TooShort => "too_short",
            Self::TooLong => "too_long",
            Self::BadVersion => "bad_version",
            Self::NotClientMode => "not_client_mode",
            Self::MalformedExtensions => "malformed_extensions",
            Self::TooManyExtensions => "too_many_extensions",
            Self::MalformedNts => "malformed_nts",
            Self::AuthenticationFailed => "auth_failed",
            Self::UnauthenticatedRefused => "unauthenticated_refused",
            Self::Internal => "internal",
            Self::RateLimited => "rate_limited",
            Self::RateLimitedNts => "rate_limited_nts",
            Self::TooOld => "too_old",
            Self::Unsynchronized => "unsynchronized",
        }
    }
}

/// What to send back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Response {
    /// Plain NTP server response of this many bytes.
    Plain(usize),
    /// NTS-authenticated response with this many cookies.
    Nts { len: usize, cookies: usize },
    /// NTS NAK (kiss code NTSN): the cookie could not be opened.
    Nak { len: usize, why: CookieError },
    /// Kiss-o'-death RATE to a plain NTP client (caller decided it is over its rate).
    Rate(usize),
}

impl Response {
    pub fn len(&self) -> usize {
        match *self {
            Self::Plain(n) | Self::Rate(n) => n,
            Self::Nts { len, .. } | Self::Nak { len, .. } => len,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A request parsed once ([`parse_request`]): header and NTS parts.
pub type Request<'a> = NtsPacket<'a>;

/// Parse a datagram once into the view every decision on it reads: the
/// length limit, the header (version 1-4, client mode) and the NTS fields
/// under the rules both roles share.
pub fn parse_request<'a>(req: &'a [u8], policy: &ServerPolicy) -> Result<Request<'a>, DropReason> {
    if req.len() > MAX_REQUEST_LEN {
        return Err(DropReason::TooLong);
    }
    let (header, _) = NtpHeader::parse(req).map_err(|e| match e {
        PacketError::TooShort(_) => DropReason::TooShort,
        PacketError::UnsupportedVersion(_) => DropReason::BadVersion,
    })?;
    if header.mode != Mode::Client {
        return Err(DropReason::NotClientMode);
    }
    let fields = nts_fields::scan(req, policy.max_extension_fields).map_err(|e| match e {
        NtsFieldsError::TooMany => DropReason::TooManyExtensions,
        NtsFieldsError::Malformed => DropReason::MalformedExtensions,
        _ => DropReason::MalformedNts,
    })?;
    Ok(NtsPacket {
        bytes: req,
        header,
        fields,
    })
}

fn response_header(req: &NtpHeader, clock: &ServerClock, recv: NtpTimestamp) -> NtpHeader {
    NtpHeader {
        leap: clock.leap,
        version: req.version,
        mode: Mode::Server,
        stratum: clock.stratum,
        poll: req.poll,
        precision: clock.precision,
        root_delay: clock.root_delay,
        root_dispersion: clock.root_dispersion,
        reference_id: clock.reference_id,
        reference_timestamp: clock.reference_timestamp,
        origin_timestamp: req.transmit_timestamp,
        receive_timestamp: recv,
        transmit_timestamp: NtpTimestamp::ZERO,
    }
}

/// Why an over-rate request is dropped, without answering it: its parsed
/// view (no cryptography) tells NTS from plain NTP for the metrics. A request
/// whose extension fields are broken counts as NTS: only NTS sends them.
pub fn over_rate_reason_of(parsed: &Result<Request<'_>, DropReason>) -> DropReason {
    let nts = match parsed {
        Ok(r) => r.fields.any_nts,
        Err(e) => matches!(
            e,
            DropReason::MalformedNts
                | DropReason::MalformedExtensions
                | DropReason::TooManyExtensions
        ),
    };
    if nts {
        DropReason::RateLimitedNts
    } else {
        DropReason::RateLimited
    }
}

/// [`over_rate_reason_of`] on a datagram not parsed yet.
pub fn over_rate_reason(req: &[u8], policy: &ServerPolicy) -> DropReason {
    over_rate_reason_of(&parse_request(req, policy))
}

/// Inputs that vary per request.
pub struct RequestContext<'a> {
    /// When the request arrived (kernel timestamp where available).
    pub receive_timestamp: NtpTimestamp,
    /// Unix seconds now, for cookie key expiry.
    pub unix_now: u64,
    pub clock: &'a ServerClock,
    pub ring: &'a KeyRing,
    pub policy: &'a ServerPolicy,
    /// The client is over its rate and may be told so: a plain request gets a
    /// RATE kiss instead of time; an NTS request is dropped
    /// ([`DropReason::RateLimitedNts`]), never answered with an unauthenticated kiss.
    pub rate_kiss: bool,
    /// Answer in interleaved mode with this transmit timestamp of the previous
    /// response to this client ([`crate::interleaved::TransmitTable::decide`]).
    pub previous_transmit: Option<NtpTimestamp>,
}

/// Parse `req` ([`parse_request`]) and answer it ([`respond_to`]).
pub fn respond(
    req: &[u8],
    ctx: &RequestContext<'_>,
    out: &mut [u8],
    fill_random: &mut dyn FnMut(&mut [u8]),
    transmit_time: &mut dyn FnMut() -> NtpTimestamp,
) -> Result<Response, DropReason> {
    let parsed = parse_request(req, ctx.policy)?;
    respond_to(&parsed, ctx, out, fill_random, transmit_time)
}

/// Answer a parsed request into `out`. `out` must be at least as long as the
/// request (the response never exceeds it). `fill_random` supplies nonces;
/// `transmit_time` is read as late as possible, just before sealing.
pub fn respond_to(
    parsed: &Request<'_>,
    ctx: &RequestContext<'_>,
    out: &mut [u8],
    fill_random: &mut dyn FnMut(&mut [u8]),
    transmit_time: &mut dyn FnMut() -> NtpTimestamp,
) -> Result<Response, DropReason> {
    let (req, header, nts) = (parsed.bytes, &parsed.header, &parsed.fields);
    let out = out.get_mut(..req.len()).ok_or(DropReason::Internal)?;
    let mut resp = response_header(header, ctx.clock, mark_receive(ctx.receive_timestamp));
    // Basic mode: the transmit timestamp is read as late as possible. Interleaved
    // mode: the previous response's, taken after it left, and the origin is the
    // request's receive field, which is how the client tells the two apart.
    let mut finish = |resp: &mut NtpHeader| match ctx.previous_transmit {
        Some(t) => {
            resp.origin_timestamp = header.receive_timestamp;
            resp.transmit_timestamp = t;
        }
        None => resp.transmit_timestamp = mark_transmit(transmit_time()),
    };

    if !nts.any_nts {
        if !ctx.policy.serve_unauthenticated {
            return Err(DropReason::UnauthenticatedRefused);
        }
        if ctx.rate_kiss {
            return Ok(Response::Rate(write_kiss(&resp, kiss::RATE, None, out)?));
        }
        finish(&mut resp);
        let mut w = FieldWriter::new(out);
        w.put(&resp.to_bytes()).map_err(|_| DropReason::Internal)?;
        return Ok(Response::Plain(w.len()));
    }

    let (Some(uid), Some(cookie_bytes), Some((auth_offset, auth_body))) =
        (nts.unique_id, nts.cookie, nts.authenticator)
    else {
        return Err(DropReason::MalformedNts);
    };
    let auth = Authenticator::parse(auth_body).map_err(|_| DropReason::MalformedNts)?;
    if ctx.rate_kiss {
        return Err(DropReason::RateLimitedNts);
    }
    if ctx.clock.leap == LeapIndicator::Unsynchronized {
        return Err(DropReason::Unsynchronized);
    }

    // Borrowed, not moved out: the keys carry about 4 KiB of prepared cipher state.
    let opened = cookie::open(ctx.ring, cookie_bytes, ctx.unix_now);
    let keys = match &opened {
        Ok(k) => k,
        Err(why) => {
            let len = write_kiss(&resp, kiss::NTSN, Some(uid), out)?;
            return Ok(Response::Nak { len, why: *why });
        }
    };

    // Verify the authenticator: associated data is everything before the field.
    let mut scratch = [0u8; MAX_REQUEST_LEN];
    let enc = &auth.ciphertext[TAG_LEN..];
    let mut tag = [0u8; TAG_LEN];
    tag.copy_from_slice(&auth.ciphertext[..TAG_LEN]);
    let plain = &mut scratch[..enc.len()];
    plain.copy_from_slice(enc);
    keys.c2s
        .open_detached(auth.nonce, &req[..auth_offset], &tag, plain)
        .map_err(|_| DropReason::AuthenticationFailed)?;
    // Encrypted extension fields must at least be well formed.
    for f in ExtensionFields::new(plain, ctx.policy.max_extension_fields) {
        f.map_err(|_| DropReason::MalformedNts)?;
    }

    // One cookie per cookie and placeholder received, as many as fit in the request's size.
    let alg = keys.algorithm();
    let cookie_len = cookie::cookie_len(alg);
    let cookie_field = 4 + cookie_len;
    let uid_field = crate::extension_field::field_wire_len(uid.len());
    let fixed = HEADER_LEN + uid_field + 4 + Authenticator::body_len(NONCE_LEN, TAG_LEN);
    let wanted = (1 + nts.placeholders).min(MAX_COOKIES_RETURNED);
    let fit = req.len().saturating_sub(fixed) / cookie_field;
    let n = wanted.min(fit);
    let current = ctx.ring.current(ctx.unix_now);
    let n = if current.is_some() { n } else { 0 };

    // Build: header | UID | authenticator(nonce, tag, sealed cookie fields).
    let pt_len = n * cookie_field;
    let mut w = FieldWriter::new(out);
    let header_at = w.reserve(HEADER_LEN).map_err(|_| DropReason::Internal)?;
    w.field(field_type::UNIQUE_IDENTIFIER, uid)
        .map_err(|_| DropReason::Internal)?;
    let ad_end = w.len();
    let auth_body_len = Authenticator::body_len(NONCE_LEN, TAG_LEN + pt_len);
    let auth_at = w
        .reserve(4 + auth_body_len)
        .map_err(|_| DropReason::Internal)?;
    let len = w.len();
    let buf = w.buf_mut();
    // Authenticator field header and lengths.
    buf[auth_at..auth_at + 2].copy_from_slice(&field_type::NTS_AUTHENTICATOR.to_be_bytes());
    buf[auth_at + 2..auth_at + 4].copy_from_slice(&((4 + auth_body_len) as u16).to_be_bytes());
    buf[auth_at + 4..auth_at + 6].copy_from_slice(&(NONCE_LEN as u16).to_be_bytes());
    buf[auth_at + 6..auth_at + 8].copy_from_slice(&((TAG_LEN + pt_len) as u16).to_be_bytes());
    let nonce_at = auth_at + 8;
    let tag_at = nonce_at + NONCE_LEN;
    let pt_at = tag_at + TAG_LEN;
    fill_random(&mut buf[nonce_at..tag_at]);
    // Plaintext: n NTS Cookie fields, sealed fresh.
    if let Some(key) = current {
        for i in 0..n {
            let at = pt_at + i * cookie_field;
            buf[at..at + 2].copy_from_slice(&field_type::NTS_COOKIE.to_be_bytes());
            buf[at + 2..at + 4].copy_from_slice(&(cookie_field as u16).to_be_bytes());
            let mut cnonce = [0u8; COOKIE_NONCE_LEN];
            fill_random(&mut cnonce);
            let dst = &mut buf[at + 4..at + 4 + cookie_len];
            cookie::seal_into(key, keys, &cnonce, dst).ok_or(DropReason::Internal)?;
        }
    }
    // Transmit timestamp as late as possible, then seal over header + UID.
    finish(&mut resp);
    resp.write(
        (&mut buf[header_at..header_at + HEADER_LEN])
            .try_into()
            .map_err(|_| DropReason::Internal)?,
    );
    let mut nonce = [0u8; NONCE_LEN];
    nonce.copy_from_slice(&buf[nonce_at..tag_at]);
    let (ad, rest) = buf.split_at_mut(ad_end);
    let pt = &mut rest[pt_at - ad_end..pt_at - ad_end + pt_len];
    let t = keys.s2c.seal_detached(&nonce, ad, pt);
    buf[tag_at..pt_at].copy_from_slice(&t);
    debug_assert!(len <= req.len());
    Ok(Response::Nts { len, cookies: n })
}

/// A kiss-o'-death: stratum 0, the code in the reference id, echoing the Unique Identifier for NTS clients.
fn write_kiss(
    resp: &NtpHeader,
    code: [u8; 4],
    uid: Option<&[u8]>,
    out: &mut [u8],
) -> Result<usize, DropReason> {
    let mut k = *resp;
    k.leap = LeapIndicator::Unsynchronized;
    k.stratum = 0;
    k.reference_id = code;
    k.reference_timestamp = NtpTimestamp::ZERO;
    k.receive_timestamp = NtpTimestamp::ZERO;
    k.transmit_timestamp = NtpTimestamp::ZERO;
    let mut w = FieldWriter::new(out);
    w.put(&k.to_bytes()).map_err(|_| DropReason::Internal)?;
    if let Some(uid) = uid {
        w.field(field_type::UNIQUE_IDENTIFIER, uid)
            .map_err(|_| DropReason::Internal)?;
    }
    Ok(w.len())
}
