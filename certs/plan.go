package certs

import (
	"crypto/x509"
	"net"
	"slices"
	"time"
)

// Action is one change to the self-managed Secret. One check makes at most one; the
// next check plans again from what the Secret then holds.
type Action int

const (
	// ActionNone: the Secret is fine as it is.
	ActionNone Action = iota
	// ActionBootstrap: the Secret is empty or unusable; make a new CA and serving
	// certificate with no overlap (nothing valid is being served).
	ActionBootstrap
	// ActionRotateCA: the CA is due; a new CA becomes current and the old one
	// previous. The serving certificate is unchanged, so both CAs are trusted before
	// anything signed by the new one is served.
	ActionRotateCA
	// ActionIssueCert: a new serving certificate from the current CA.
	ActionIssueCert
	// ActionDropPreviousCA: the end of a CA rotation's overlap window.
	ActionDropPreviousCA
)

var actionNames = [...]string{"none", "bootstrap", "rotate-ca", "issue-cert", "drop-previous-ca"}

func (a Action) String() string { return actionNames[a] }

// Plan is the decision of one check.
type Plan struct {
	Action Action
	Reason string
}

// timing is what plan needs of Config.
type timing struct {
	caRenewBefore, certRenewBefore, interval time.Duration
	dnsNames                                 []string
	ips                                      []net.IP
}

func (c *Config) timing() timing {
	return timing{c.CARenewBefore, c.CertRenewBefore, c.CheckInterval, c.DNSNames(), c.IPAddresses()}
}

// plan decides the next change to the Secret. m is nil for an empty or unusable
// Secret; bundleHasCA says whether, when this check began, the caBundle of every
// webhook already held m.CA — only then has the apiserver had the chance to pick it up.
//
// The overlap rules of a CA rotation, in order:
//  1. the new CA enters the Secret (and at once the caBundle) next to the old one;
//  2. a serving certificate from it is issued once the caBundle has held it for one
//     check interval (the apiserver's informer has seen it);
//  3. the old CA leaves two intervals after that, when every replica, polling once per
//     interval, serves the new certificate.
func plan(now time.Time, m *Material, bundleHasCA bool, t timing) Plan {
	switch {
	case m == nil:
		return Plan{ActionBootstrap, "no usable certificate in the Secret"}
	case !now.Before(m.CA.NotAfter):
		return Plan{ActionBootstrap, "CA expired"}
	}
	signedByCurrent := m.Cert.CheckSignatureFrom(m.CA) == nil
	certExpired := !now.Before(m.Cert.NotAfter)

	if !signedByCurrent {
		// Mid-rotation: the serving certificate is still the old CA's.
		switch {
		case certExpired:
			return Plan{ActionIssueCert, "serving certificate expired during a CA rotation"}
		case bundleHasCA && !now.Before(m.CARotatedAt.Add(t.interval)):
			return Plan{ActionIssueCert, "new CA trusted by the caBundle for a check interval"}
		default:
			return Plan{ActionNone, "waiting for the caBundle to trust the new CA"}
		}
	}
	if m.PreviousCA == nil && !now.Before(m.CA.NotAfter.Add(-t.caRenewBefore)) {
		return Plan{ActionRotateCA, "CA due for renewal"}
	}
	switch {
	case certExpired:
		return Plan{ActionIssueCert, "serving certificate expired"}
	case !now.Before(m.Cert.NotAfter.Add(-t.certRenewBefore)):
		return Plan{ActionIssueCert, "serving certificate due for renewal"}
	case !sameSANs(m.Cert, t.dnsNames, t.ips):
		return Plan{ActionIssueCert, "serving certificate names changed"}
	}
	if m.PreviousCA != nil {
		switch {
		case !now.Before(m.PreviousCA.NotAfter):
			return Plan{ActionDropPreviousCA, "previous CA expired"}
		case !now.Before(m.CertIssuedAt.Add(2 * t.interval)):
			return Plan{ActionDropPreviousCA, "every replica serves a certificate from the new CA"}
		}
	}
	return Plan{ActionNone, ""}
}

func sameSANs(c *x509.Certificate, dnsNames []string, ips []net.IP) bool {
	return slices.Equal(c.DNSNames, dnsNames) &&
		slices.EqualFunc(c.IPAddresses, ips, func(a, b net.IP) bool { return a.Equal(b) })
}

// apply carries out p on m (nil for ActionBootstrap) and returns the new Material.
func apply(now time.Time, p Plan, m *Material, c *Config) (*Material, error) {
	t := c.timing()
	next := &Material{}
	if m != nil {
		*next = *m
	}
	switch p.Action {
	case ActionBootstrap:
		next = &Material{}
		fallthrough
	case ActionRotateCA:
		caPEM, caKeyPEM, err := newCA(now, c.CAValidity)
		if err != nil {
			return nil, err
		}
		if p.Action == ActionRotateCA {
			next.PreviousCAPEM = m.CAPEM
		}
		next.CAPEM, next.CAKeyPEM, next.CARotatedAt = caPEM, caKeyPEM, now
		if p.Action == ActionRotateCA {
			break
		}
		fallthrough
	case ActionIssueCert:
		ca, err := parseCA(next)
		if err != nil {
			return nil, err
		}
		next.CertPEM, next.KeyPEM, err = newServingCert(now, c.CertValidity, ca.CA, ca.CAKey, t.dnsNames, t.ips)
		if err != nil {
			return nil, err
		}
		next.CertIssuedAt = now
	case ActionDropPreviousCA:
		next.PreviousCAPEM = nil
	}
	return ParseSecret(next.Data(), next.Annotations())
}

// parseCA parses only the CA of m (its serving certificate may not exist yet).
func parseCA(m *Material) (*Material, error) {
	out := *m
	var err error
	if out.CA, err = x509ParsePEM(m.CAPEM); err != nil {
		return nil, err
	}
	out.CAKey, err = parseKey(m.CAKeyPEM)
	return &out, err
}
