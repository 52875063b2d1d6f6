//! JWS (RFC 7515) signature checks for the `jwt-auth` plugin: HMAC (HS256/384/512), ECDSA with
//! fixed-size `r || s` signatures (ES256/384), Ed25519 (EdDSA) and RSA PKCS#1 v1.5 (RS256/384/512,
//! 2048..8192-bit moduli). Asymmetric keys are PEM `PUBLIC KEY` (SubjectPublicKeyInfo) blocks; the
//! key inside is taken out with a small DER walker and checked against the algorithm's key type.
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use ring::{hmac, signature};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::SubjectPublicKeyInfoDer;

// DER encodings (tag, length, value) of the OIDs this module knows.
const OID_RSA: &[u8] = &[
    0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01,
];
const OID_EC: &[u8] = &[0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01];
const OID_P256: &[u8] = &[0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
const OID_P384: &[u8] = &[0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x22];
const OID_ED25519: &[u8] = &[0x06, 0x03, 0x2b, 0x65, 0x70];

#[derive(Clone, Copy)]
enum Alg {
    Hmac(hmac::Algorithm),
    Asym(&'static dyn signature::VerificationAlgorithm, KeyType),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum KeyType {
    Rsa,
    P256,
    P384,
    Ed25519,
}

fn parse_alg(alg: &str) -> Result<Alg, String> {
    use signature::*;
    Ok(match alg {
        "HS256" => Alg::Hmac(hmac::HMAC_SHA256),
        "HS384" => Alg::Hmac(hmac::HMAC_SHA384),
        "HS512" => Alg::Hmac(hmac::HMAC_SHA512),
        "RS256" => Alg::Asym(&RSA_PKCS1_2048_8192_SHA256, KeyType::Rsa),
        "RS384" => Alg::Asym(&RSA_PKCS1_2048_8192_SHA384, KeyType::Rsa),
        "RS512" => Alg::Asym(&RSA_PKCS1_2048_8192_SHA512, KeyType::Rsa),
        "ES256" => Alg::Asym(&ECDSA_P256_SHA256_FIXED, KeyType::P256),
        "ES384" => Alg::Asym(&ECDSA_P384_SHA384_FIXED, KeyType::P384),
        "EdDSA" => Alg::Asym(&ED25519, KeyType::Ed25519),
        _ => return Err(format!("unsupported algorithm {alg:?}")),
    })
}

/// Reads one DER TLV at the start of `input`: (tag, value, rest). Definite lengths only.
fn tlv(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, mut rest) = rest.split_first()?;
    let len = if first < 0x80 {
        usize::from(first)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let mut len = 0usize;
        for &b in &rest[..n] {
            len = (len << 8) | usize::from(b);
        }
        rest = &rest[n..];
        len
    };
    if rest.len() < len {
        return None;
    }
    Some((tag, &rest[..len], &rest[len..]))
}

/// SubjectPublicKeyInfo ::= SEQUENCE { SEQUENCE { OID, params? }, BIT STRING }:
/// (the key type, the bit string's bytes) — what ring's `UnparsedPublicKey` takes for RSA (the
/// RSAPublicKey DER), EC (the uncompressed point) and Ed25519 (the 32 raw bytes).
fn parse_spki(der: &[u8]) -> Result<(KeyType, &[u8]), String> {
    let bad = || "public_key: malformed SubjectPublicKeyInfo".to_string();
    let (tag, spki, rest) = tlv(der).ok_or_else(bad)?;
    if tag != 0x30 || !rest.is_empty() {
        return Err(bad());
    }
    let (tag, alg_id, rest) = tlv(spki).ok_or_else(bad)?;
    if tag != 0x30 {
        return Err(bad());
    }
    let (tag, bits, tail) = tlv(rest).ok_or_else(bad)?;
    if tag != 0x03 || !tail.is_empty() {
        return Err(bad());
    }
    let key = match bits.split_first() {
        Some((0, key)) if !key.is_empty() => key,
        _ => return Err(bad()),
    };
    let oid_len = alg_id.len() - tlv(alg_id).ok_or_else(bad)?.2.len();
    let (oid, params) = alg_id.split_at(oid_len);
    let kind = match oid {
        o if o == OID_RSA && (params.is_empty() || params == [0x05, 0x00]) => KeyType::Rsa,
        o if o == OID_EC && params == OID_P256 => KeyType::P256,
        o if o == OID_EC && params == OID_P384 => KeyType::P384,
        o if o == OID_ED25519 && params.is_empty() => KeyType::Ed25519,
        _ => return Err("public_key: unsupported key type".to_string()),
    };
    Ok((kind, key))
}

/// A checked verifier: the algorithm and the key bytes ring wants.
struct Verifier {
    alg: Alg,
    key: Vec<u8>,
}

impl Verifier {
    fn new(alg: &str, key: &[u8]) -> Result<Verifier, String> {
        let alg = parse_alg(alg)?;
        let key = match alg {
            Alg::Hmac(_) => key.to_vec(),
            Alg::Asym(_, want) => {
                let der = SubjectPublicKeyInfoDer::from_pem_slice(key)
                    .map_err(|_| "public_key: not a PEM PUBLIC KEY block".to_string())?;
                let (kind, raw) = parse_spki(der.as_ref())?;
                if kind != want {
                    return Err(format!(
                        "public_key: a {kind:?} key does not fit the algorithm"
                    ));
                }
                check_key(alg, raw)?;
                raw.to_vec()
            }
        };
        Ok(Verifier { alg, key })
    }

    fn verify(&self, signing_input: &[u8], sig: &[u8]) -> bool {
        match self.alg {
            Alg::Hmac(a) => hmac::verify(&hmac::Key::new(a, &self.key), signing_input, sig).is_ok(),
            Alg::Asym(a, _) => signature::UnparsedPublicKey::new(a, &self.key)
                .verify(signing_input, sig)
                .is_ok(),
        }
    }
}

/// Rejects keys ring would never accept (wrong point length, RSA modulus out of range), so a bad key
/// is a config error rather than a 401 on every request.
fn check_key(alg: Alg, raw: &[u8]) -> Result<(), String> {
    let Alg::Asym(_, kind) = alg else {
        return Ok(());
    };
    let ok = match kind {
        KeyType::P256 => raw.len() == 65 && raw[0] == 4,
        KeyType::P384 => raw.len() == 97 && raw[0] == 4,
        KeyType::Ed25519 => raw.len() == 32,
        KeyType::Rsa => rsa_modulus(raw).is_some_and(|n| {
            let n = strip_zeros(n);
            let bits =
                (n.len() * 8).saturating_sub(n.first().map_or(0, |b| b.leading_zeros() as usize));
            (2048..=8192).contains(&bits)
        }),
    };
    if ok {
        Ok(())
    } else {
        Err(format!("public_key: invalid {kind:?} public key"))
    }
}

/// RSAPublicKey ::= SEQUENCE { modulus INTEGER, publicExponent INTEGER }: the modulus bytes.
fn rsa_modulus(der: &[u8]) -> Option<&[u8]> {
    let (tag, seq, rest) = tlv(der)?;
    if tag != 0x30 || !rest.is_empty() {
        return None;
    }
    let (tag, n, rest) = tlv(seq)?;
    let (tag_e, _e, tail) = tlv(rest)?;
    (tag == 0x02 && tag_e == 0x02 && tail.is_empty()).then_some(n)
}

fn strip_zeros(mut b: &[u8]) -> &[u8] {
    while let [0, rest @ ..] = b {
        b = rest;
    }
    b
}

/// Checks `alg` is supported and `key` fits it (a PEM SubjectPublicKeyInfo for RS*/ES*/EdDSA).
/// Raises ValueError otherwise.
#[pyfunction]
pub fn check_jws_key(alg: &str, key: &[u8]) -> PyResult<()> {
    Verifier::new(alg, key)
        .map(|_| ())
        .map_err(PyValueError::new_err)
}

/// Verifies a JWS signature: `alg` is the JWA name (HS256/384/512, RS256/384/512, ES256/384, EdDSA),
/// `key` the HMAC secret or the PEM public key, `signing_input` is `b64(header) "." b64(payload)`
/// and `signature` the decoded signature. Raises ValueError for an unknown alg or a bad key.
#[pyfunction]
pub fn verify_jws_signature(
    py: Python<'_>,
    alg: &str,
    key: &[u8],
    signing_input: &[u8],
    signature: &[u8],
) -> PyResult<bool> {
    let v = Verifier::new(alg, key).map_err(PyValueError::new_err)?;
    Ok(py.detach(|| v.verify(signing_input, signature)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b64url(s: &str) -> Vec<u8> {
        let mut out = Vec::new();
        let (mut acc, mut nbits) = (0u32, 0);
        for c in s.bytes() {
            let v = match c {
                b'A'..=b'Z' => c - b'A',
                b'a'..=b'z' => c - b'a' + 26,
                b'0'..=b'9' => c - b'0' + 52,
                b'-' => 62,
                b'_' => 63,
                _ => panic!("bad base64url"),
            };
            acc = (acc << 6) | u32::from(v);
            nbits += 6;
            if nbits >= 8 {
                nbits -= 8;
                out.push((acc >> nbits) as u8);
            }
        }
        out
    }

    fn b64(data: &[u8]) -> String {
        const T: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        let mut s = String::new();
        for chunk in data.chunks(3) {
            let b = [
                chunk[0],
                *chunk.get(1).unwrap_or(&0),
                *chunk.get(2).unwrap_or(&0),
            ];
            let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
            for i in 0..4 {
                if i <= chunk.len() {
                    s.push(T[(n >> (18 - 6 * i) & 63) as usize] as char);
                } else {
                    s.push('=');
                }
            }
        }
        s
    }

    fn pem(der: &[u8]) -> Vec<u8> {
        format!(
            "-----BEGIN PUBLIC KEY-----\n{}\n-----END PUBLIC KEY-----\n",
            b64(der)
        )
        .into_bytes()
    }

    fn ec_p256_pem(x: &str, y: &str) -> Vec<u8> {
        let mut der = vec![0x30, 0x59, 0x30, 0x13];
        der.extend_from_slice(OID_EC);
        der.extend_from_slice(OID_P256);
        der.extend_from_slice(&[0x03, 0x42, 0x00, 0x04]);
        der.extend(b64url(x));
        der.extend(b64url(y));
        pem(&der)
    }

    fn ed25519_pem(x: &str) -> Vec<u8> {
        let mut der = vec![0x30, 0x2a, 0x30, 0x05];
        der.extend_from_slice(OID_ED25519);
        der.extend_from_slice(&[0x03, 0x21, 0x00]);
        der.extend(b64url(x));
        pem(&der)
    }

    fn verify(alg: &str, key: &[u8], input: &str, sig: &str) -> Result<bool, String> {
        Ok(Verifier::new(alg, key)?.verify(input.as_bytes(), &b64url(sig)))
    }

    const PAYLOAD: &str = "eyJpc3MiOiJqb2UiLA0KICJleHAiOjEzMDA4MTkzODAsDQogImh0dHA6Ly9leGFtcGxlLmNvbS9pc19yb290Ijp0cnVlfQ";

    #[test]
    fn rfc7515_a1_hs256() {
        let key = b64url("AyM1SysPpbyDfgZld3umj1qzKObwVMkoqQ-EstJQLr_T-1qS0gZH75aKtMN3Yj0iPS4hcgUuTwjAzZr1Z9CAow");
        let input = format!("eyJ0eXAiOiJKV1QiLA0KICJhbGciOiJIUzI1NiJ9.{PAYLOAD}");
        let sig = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk";
        assert_eq!(verify("HS256", &key, &input, sig), Ok(true));
        // Wrong length/algorithm/key/input all fail.
        assert_eq!(verify("HS384", &key, &input, sig), Ok(false));
        assert_eq!(verify("HS256", b"other", &input, sig), Ok(false));
        assert_eq!(verify("HS256", &key, &input[1..], sig), Ok(false));
        assert_eq!(verify("HS256", &key, &input, "dBjftJeZ4CVP"), Ok(false));
        assert_eq!(verify("HS256", &key, &input, ""), Ok(false));
    }

    #[test]
    fn rfc7515_a3_es256() {
        let key = ec_p256_pem(
            "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU",
            "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0",
        );
        let input = format!("eyJhbGciOiJFUzI1NiJ9.{PAYLOAD}");
        let sig = "DtEhU3ljbEg8L38VWAfUAqOyKAM6-Xx-F4GawxaepmXFCgfTjDxw5djxLa8ISlSApmWQxfKTUJqPP3-Kg6NU1Q";
        assert_eq!(verify("ES256", &key, &input, sig), Ok(true));
        assert_eq!(verify("ES256", &key, &input[1..], sig), Ok(false));
        // A P-256 key does not fit ES384, RS256 or EdDSA.
        for alg in ["ES384", "RS256", "EdDSA"] {
            assert!(Verifier::new(alg, &key).is_err(), "{alg}");
        }
    }

    #[test]
    fn rfc8037_a4_ed25519() {
        let key = ed25519_pem("11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo");
        let input = "eyJhbGciOiJFZERTQSJ9.RXhhbXBsZSBvZiBFZDI1NTE5IHNpZ25pbmc";
        let sig = "hgyY0il_MGCjP0JzlnLWG1PPOt7-09PGcvMg3AIbQR6dWbhijcNR4ki4iylGjg5BhVsPt9g7sVvpAr_MuM0KAg";
        assert_eq!(verify("EdDSA", &key, input, sig), Ok(true));
        assert_eq!(verify("EdDSA", &key, &input[1..], sig), Ok(false));
        assert!(Verifier::new("ES256", &key).is_err());
    }

    #[test]
    fn bad_algorithms_and_keys() {
        for alg in ["none", "", "hs256", "PS256", "ES512", "HS1"] {
            assert!(Verifier::new(alg, b"k").is_err(), "{alg}");
        }
        assert!(Verifier::new("RS256", b"not a pem").is_err());
        assert!(Verifier::new("RS256", &pem(&[0x30, 0x00])).is_err());
        assert!(Verifier::new("RS256", &pem(&[0x30, 0x82, 0xff])).is_err());
        // Truncated EC point.
        let mut der = vec![0x30, 0x58, 0x30, 0x13];
        der.extend_from_slice(OID_EC);
        der.extend_from_slice(OID_P256);
        der.extend_from_slice(&[0x03, 0x41, 0x00, 0x04]);
        der.extend([1u8; 63]);
        assert!(Verifier::new("ES256", &pem(&der)).is_err());
    }

    #[test]
    fn der_lengths() {
        assert_eq!(
            tlv(&[0x04, 0x01, 0xaa, 0xbb]),
            Some((0x04, &[0xaa][..], &[0xbb][..]))
        );
        assert_eq!(
            tlv(&[0x04, 0x81, 0x01, 0xaa]),
            Some((0x04, &[0xaa][..], &[][..]))
        );
        assert_eq!(tlv(&[0x04, 0x02, 0xaa]), None);
        assert_eq!(tlv(&[0x04, 0x80]), None);
        assert_eq!(tlv(&[0x04]), None);
    }
}
