//! Certificate files replaced under a running server: new handshakes get the
//! new certificate; a broken replacement keeps the old one and says why.

mod common;

use rcgen::ExtendedKeyUsagePurpose;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;
use std::time::Duration;

async fn presented_cert(server: &common::KeServer) -> CertificateDer<'static> {
    let tcp = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    let tls = tokio_rustls::TlsConnector::from(server.client_config())
        .connect("localhost".try_into().unwrap(), tcp)
        .await
        .unwrap();
    tls.get_ref().1.peer_certificates().unwrap()[0]
        .clone()
        .into_owned()
}

fn file_cert(path: &std::path::Path) -> CertificateDer<'static> {
    CertificateDer::from_pem_file(path).unwrap()
}

/// Replace a file the way renewal tools do: write beside it, then rename over it.
fn replace(path: &std::path::Path, contents: &[u8]) {
    let tmp = path.with_extension("new");
    std::fs::write(&tmp, contents).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificate_files_are_reloaded() {
    let server = common::start("");
    let original = file_cert(&server.pki.server_cert);
    assert_eq!(presented_cert(&server).await, original);

    // An exchange in progress when the files change still completes.
    let tcp = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    let mut open_conn = tokio_rustls::TlsConnector::from(server.client_config())
        .connect("localhost".try_into().unwrap(), tcp)
        .await
        .unwrap();

    let (cert, key) = nts_ke_server::dev_pki::issue(
        &server.pki,
        &["localhost", "127.0.0.1"],
        &[ExtendedKeyUsagePurpose::ServerAuth],
    )
    .unwrap();
    replace(&server.pki.server_key, key.as_bytes());
    replace(&server.pki.server_cert, cert.as_bytes());
    let renewed = file_cert(&server.pki.server_cert);
    assert_ne!(renewed, original);

    let mut seen = None;
    for _ in 0..50 {
        let c = presented_cert(&server).await;
        if c == renewed {
            seen = Some(c);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        seen.is_some(),
        "renewed certificate never presented\n{}",
        server.guard.logs()
    );
    assert!(server.metric("nts_ke_certificate_reloads_total{result=\"ok\"}") >= 1);

    {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut req = Vec::new();
        nts_proto::ke_record::Record::NextProtocol(vec![0]).encode(true, &mut req);
        nts_proto::ke_record::Record::AeadAlgorithm(vec![15]).encode(true, &mut req);
        nts_proto::ke_record::Record::EndOfMessage.encode(true, &mut req);
        open_conn.write_all(&req).await.unwrap();
        let mut resp = Vec::new();
        open_conn.read_to_end(&mut resp).await.unwrap();
        let r = nts_proto::ke_client::ResponseDecoder::new()
            .feed(&resp)
            .unwrap()
            .unwrap();
        assert_eq!(
            r.cookies.len(),
            8,
            "connection opened before the swap completes"
        );
        // It saw the original certificate.
        assert_eq!(
            open_conn.get_ref().1.peer_certificates().unwrap()[0],
            original
        );
    }

    // A broken replacement: the server keeps the renewed certificate and logs why.
    let failed_before = server.metric("nts_ke_certificate_reloads_total{result=\"failed\"}");
    replace(
        &server.pki.server_cert,
        b"-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n",
    );
    server
        .guard
        .wait_for_log_contains("keeping the current certificate", Duration::from_secs(10))
        .unwrap();
    assert!(server.metric("nts_ke_certificate_reloads_total{result=\"failed\"}") > failed_before);
    assert_eq!(presented_cert(&server).await, renewed);
    assert_eq!(server.good_exchange().await.cookies.len(), 8);
}
