//! The certificates and keys of one test control plane, generated in-process (ECDSA P-256):
//! a CA, the apiserver's serving certificate for 127.0.0.1, an admin client certificate in
//! `system:masters`, and the service-account signing key.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose,
};

use super::error::{ControlPlaneError, Result};

/// Common name of the test CA.
const CA_NAME: &str = "egressgw-test-ca";
/// Common name of the apiserver's serving certificate.
const SERVING_NAME: &str = "kube-apiserver";
/// Names the serving certificate is valid for (loopback only).
const SERVING_SANS: &[&str] = &["127.0.0.1", "localhost"];
/// User name of the admin client certificate.
pub const ADMIN_USER: &str = "egressgw-test-admin";
/// Group of the admin client certificate: cluster-admin through the built-in binding.
pub const ADMIN_GROUP: &str = "system:masters";

/// PEM files written for a control plane, plus the PEM text the kubeconfig embeds.
#[derive(Clone, Debug)]
pub struct CertFiles {
    pub ca_cert: PathBuf,
    pub serving_cert: PathBuf,
    pub serving_key: PathBuf,
    pub service_account_key: PathBuf,
    pub service_account_public_key: PathBuf,
    pub ca_pem: String,
    pub admin_cert_pem: String,
    pub admin_key_pem: String,
}

fn dn(common_name: &str, organization: Option<&str>) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    if let Some(org) = organization {
        dn.push(DnType::OrganizationName, org);
    }
    dn
}

fn key(what: &'static str) -> Result<KeyPair> {
    KeyPair::generate().map_err(|source| ControlPlaneError::Certificate { what, source })
}

fn leaf_params(
    what: &'static str,
    sans: &[&str],
    name: DistinguishedName,
    usage: ExtendedKeyUsagePurpose,
) -> Result<CertificateParams> {
    let sans: Vec<String> = sans.iter().map(|s| s.to_string()).collect();
    let mut params = CertificateParams::new(sans)
        .map_err(|source| ControlPlaneError::Certificate { what, source })?;
    params.distinguished_name = name;
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![usage];
    Ok(params)
}

/// Generates every certificate and key into `dir`.
pub fn generate(dir: &Path) -> Result<CertFiles> {
    let mut ca_params = CertificateParams::default();
    ca_params.distinguished_name = dn(CA_NAME, None);
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca = CertifiedIssuer::self_signed(ca_params, key("CA")?)
        .map_err(|source| ControlPlaneError::Certificate { what: "CA", source })?;

    let serving_key = key("serving")?;
    let serving = leaf_params(
        "serving",
        SERVING_SANS,
        dn(SERVING_NAME, None),
        ExtendedKeyUsagePurpose::ServerAuth,
    )?
    .signed_by(&serving_key, &ca)
    .map_err(|source| ControlPlaneError::Certificate {
        what: "serving",
        source,
    })?;

    let admin_key = key("admin client")?;
    let admin = leaf_params(
        "admin client",
        &[],
        dn(ADMIN_USER, Some(ADMIN_GROUP)),
        ExtendedKeyUsagePurpose::ClientAuth,
    )?
    .signed_by(&admin_key, &ca)
    .map_err(|source| ControlPlaneError::Certificate {
        what: "admin client",
        source,
    })?;

    let service_account_key = key("service-account signing")?;

    let files = CertFiles {
        ca_cert: dir.join("ca.crt"),
        serving_cert: dir.join("apiserver.crt"),
        serving_key: dir.join("apiserver.key"),
        service_account_key: dir.join("service-account.key"),
        service_account_public_key: dir.join("service-account.pub"),
        ca_pem: ca.pem(),
        admin_cert_pem: admin.pem(),
        admin_key_pem: admin_key.serialize_pem(),
    };
    write_private(&files.ca_cert, &files.ca_pem)?;
    write_private(&files.serving_cert, &serving.pem())?;
    write_private(&files.serving_key, &serving_key.serialize_pem())?;
    write_private(
        &files.service_account_key,
        &service_account_key.serialize_pem(),
    )?;
    write_private(
        &files.service_account_public_key,
        &service_account_key.public_key_pem(),
    )?;
    Ok(files)
}

/// Writes a file readable by its owner only.
pub(crate) fn write_private(path: &Path, contents: &str) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .and_then(|mut f| f.write_all(contents.as_bytes()))
        .map_err(ControlPlaneError::io(format!("writing {}", path.display())))
}
