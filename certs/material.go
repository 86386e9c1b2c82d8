package certs

import (
	"bytes"
	"crypto"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"slices"
	"strconv"
	"time"

	"github.com/cert-manager/cert-manager/pkg/util/pki"
	corev1 "k8s.io/api/core/v1"
)

// Keys of the self-managed Secret.
const (
	// KeyCACert is the current CA: it signs new serving certificates.
	KeyCACert = "ca.crt"
	// KeyCAKey is the current CA's private key.
	KeyCAKey = "ca.key"
	// KeyPreviousCACert is the CA being retired during a CA rotation: still in the
	// caBundle until nothing it signed is served.
	KeyPreviousCACert = "ca-previous.crt"
	// KeyCert and KeyKey are the serving certificate and key.
	KeyCert = corev1.TLSCertKey
	KeyKey  = corev1.TLSPrivateKeyKey

	// AnnotationCARotatedAt is when the current CA entered the Secret (RFC 3339). It
	// is written for people reading the Secret; podmeta reads the time from the CA
	// itself (issuedAt), so deleting or editing it changes nothing.
	AnnotationCARotatedAt = "podmeta.io/ca-rotated-at"
	// AnnotationCertIssuedAt is when the current serving certificate entered the
	// Secret; like AnnotationCARotatedAt, informational only.
	AnnotationCertIssuedAt = "podmeta.io/cert-issued-at"
)

// backdate is subtracted from NotBefore so that an apiserver whose clock is a little
// behind ours does not see a certificate from the future.
const backdate = time.Minute

// notBefore is the NotBefore of a certificate made at now: backdated, and truncated to
// the whole second X.509 stores, so that issuedAt gives back now to the second.
// (Rounding up instead would delay every step of a rotation by one check interval
// whenever the checks fall between seconds.)
func notBefore(now time.Time) time.Time { return now.Truncate(time.Second).Add(-backdate) }

// issuedAt is when podmeta made c, to the second: the overlap of a CA rotation is timed from the
// certificates themselves, which no one can change without replacing them, and not
// from the Secret's annotations, which anyone who may edit it can delete (a rotation
// would then drop the previous CA at once, skipping the overlap).
func issuedAt(c *x509.Certificate) time.Time { return c.NotBefore.Add(backdate) }

// Material is the parsed content of the self-managed Secret.
type Material struct {
	CA         *x509.Certificate
	CAKey      crypto.Signer
	PreviousCA *x509.Certificate // nil outside a CA rotation
	Cert       *x509.Certificate
	Key        crypto.Signer
	// PEM forms, written back unchanged.
	CAPEM, CAKeyPEM, PreviousCAPEM, CertPEM, KeyPEM []byte
	// When the CA and the serving certificate were made, from their NotBefore.
	CARotatedAt, CertIssuedAt time.Time
}

// ErrEmpty is returned by ParseSecret for a Secret with no certificate yet (the
// pre-created, empty Secret).
var ErrEmpty = errors.New("secret holds no certificate")

// parsePair decodes the certificate and private key under certKey and keyKey and checks
// that they belong together.
func parsePair(data map[string][]byte, certKey, keyKey string) (*x509.Certificate, crypto.Signer, error) {
	cert, err := pki.DecodeX509CertificateBytes(data[certKey])
	if err != nil {
		return nil, nil, fmt.Errorf("%s: %w", certKey, err)
	}
	key, err := pki.DecodePrivateKeyBytes(data[keyKey])
	if err != nil {
		return nil, nil, fmt.Errorf("%s: %w", keyKey, err)
	}
	if ok, err := pki.PublicKeyMatchesCertificate(key.Public(), cert); err != nil || !ok {
		return nil, nil, fmt.Errorf("%s does not match %s", keyKey, certKey)
	}
	return cert, key, nil
}

// ParseSecret reads and cross-checks the Secret: the keys match their certificates and
// the serving certificate was signed by the CA or the previous CA. annotations are
// not used (see issuedAt); the parameter stays for callers that pass them.
func ParseSecret(data map[string][]byte, annotations map[string]string) (*Material, error) {
	if len(data[KeyCACert]) == 0 && len(data[KeyCert]) == 0 {
		return nil, ErrEmpty
	}
	m := &Material{
		CAPEM: data[KeyCACert], CAKeyPEM: data[KeyCAKey], PreviousCAPEM: data[KeyPreviousCACert],
		CertPEM: data[KeyCert], KeyPEM: data[KeyKey],
	}
	var err error
	if m.CA, m.CAKey, err = parsePair(data, KeyCACert, KeyCAKey); err != nil {
		return nil, err
	}
	if len(m.PreviousCAPEM) > 0 {
		if m.PreviousCA, err = pki.DecodeX509CertificateBytes(m.PreviousCAPEM); err != nil {
			return nil, fmt.Errorf("%s: %w", KeyPreviousCACert, err)
		}
	}
	if m.Cert, m.Key, err = parsePair(data, KeyCert, KeyKey); err != nil {
		return nil, err
	}
	if m.Issuer() == nil {
		return nil, fmt.Errorf("%s was signed by neither %s nor %s", KeyCert, KeyCACert, KeyPreviousCACert)
	}
	// The annotations are not read: see issuedAt.
	m.CARotatedAt, m.CertIssuedAt = issuedAt(m.CA), issuedAt(m.Cert)
	return m, nil
}

// Issuer is the CA in the Secret that signed the serving certificate, or nil.
func (m *Material) Issuer() *x509.Certificate {
	for _, ca := range []*x509.Certificate{m.CA, m.PreviousCA} {
		if ca != nil && m.Cert.CheckSignatureFrom(ca) == nil {
			return ca
		}
	}
	return nil
}

// Data and Annotations are what the Secret should hold.
func (m *Material) Data() map[string][]byte {
	d := map[string][]byte{KeyCACert: m.CAPEM, KeyCAKey: m.CAKeyPEM, KeyCert: m.CertPEM, KeyKey: m.KeyPEM}
	if len(m.PreviousCAPEM) > 0 {
		d[KeyPreviousCACert] = m.PreviousCAPEM
	}
	return d
}

// Annotations are the Secret's rotation timestamps.
func (m *Material) Annotations() map[string]string {
	return map[string]string{
		AnnotationCARotatedAt:  m.CARotatedAt.UTC().Format(time.RFC3339Nano),
		AnnotationCertIssuedAt: m.CertIssuedAt.UTC().Format(time.RFC3339Nano),
	}
}

// Bundle is the caBundle the webhook configuration should hold: the current CA, then
// the previous one during a rotation.
func (m *Material) Bundle() []byte {
	return slices.Concat(m.CAPEM, m.PreviousCAPEM)
}

// newCA makes a self-signed CA valid from now for validity.
func newCA(now time.Time, validity time.Duration) (certPEM, keyPEM []byte, err error) {
	key, err := pki.GenerateECPrivateKey(pki.ECCurve256)
	if err != nil {
		return nil, nil, err
	}
	serial, err := randomSerial()
	if err != nil {
		return nil, nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: "podmeta-webhook-ca@" + strconv.FormatInt(now.Unix(), 10)},
		NotBefore:             notBefore(now),
		NotAfter:              now.Add(validity),
		IsCA:                  true,
		BasicConstraintsValid: true,
		MaxPathLenZero:        true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature | x509.KeyUsageCRLSign,
	}
	certPEM, _, err = pki.SignCertificate(tmpl, tmpl, key.Public(), key)
	if err != nil {
		return nil, nil, fmt.Errorf("sign CA: %w", err)
	}
	keyPEM, err = pki.EncodePKCS8PrivateKey(key)
	return certPEM, keyPEM, err
}

// newServingCert makes a serving certificate signed by ca, valid from now for
// validity but never past the CA.
func newServingCert(now time.Time, validity time.Duration, ca *x509.Certificate, caKey crypto.Signer, dnsNames []string, ips []net.IP) (certPEM, keyPEM []byte, err error) {
	key, err := pki.GenerateECPrivateKey(pki.ECCurve256)
	if err != nil {
		return nil, nil, err
	}
	serial, err := randomSerial()
	if err != nil {
		return nil, nil, err
	}
	notAfter := now.Add(validity)
	if notAfter.After(ca.NotAfter) {
		notAfter = ca.NotAfter
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: dnsNames[0]},
		DNSNames:              dnsNames,
		IPAddresses:           ips,
		NotBefore:             notBefore(now),
		NotAfter:              notAfter,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageDigitalSignature,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	certPEM, _, err = pki.SignCertificate(tmpl, ca, key.Public(), caKey)
	if err != nil {
		return nil, nil, fmt.Errorf("sign serving certificate: %w", err)
	}
	keyPEM, err = pki.EncodePKCS8PrivateKey(key)
	return certPEM, keyPEM, err
}

func randomSerial() (*big.Int, error) {
	return rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
}

// parsePEMCerts returns every certificate in a PEM bundle, skipping what is not one (a
// caBundle may hold garbage before podmeta first writes it).
func parsePEMCerts(b []byte) []*x509.Certificate {
	var out []*x509.Certificate
	for {
		var block *pem.Block
		block, b = pem.Decode(b)
		if block == nil {
			return out
		}
		if block.Type != "CERTIFICATE" {
			continue
		}
		if c, err := x509.ParseCertificate(block.Bytes); err == nil {
			out = append(out, c)
		}
	}
}

// bundleContains reports whether a PEM bundle holds ca.
func bundleContains(bundle []byte, ca *x509.Certificate) bool {
	return slices.ContainsFunc(parsePEMCerts(bundle), func(c *x509.Certificate) bool { return c.Equal(ca) })
}

// sameCerts reports whether two PEM bundles hold the same certificates, in any order.
func sameCerts(a, b []byte) bool {
	ca, cb := parsePEMCerts(a), parsePEMCerts(b)
	if len(ca) != len(cb) {
		return false
	}
	for _, c := range ca {
		if !slices.ContainsFunc(cb, func(d *x509.Certificate) bool { return bytes.Equal(c.Raw, d.Raw) }) {
			return false
		}
	}
	return true
}

func x509ParsePEM(b []byte) (*x509.Certificate, error) { return pki.DecodeX509CertificateBytes(b) }

func parseKey(b []byte) (crypto.Signer, error) { return pki.DecodePrivateKeyBytes(b) }
