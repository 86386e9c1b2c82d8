// Package certs gives the webhook server its serving certificate, in one of three modes,
// and keeps the apiserver able to verify it.
//
// The contract: the server's tls.Config takes GetCertificate from a Source, the manager
// runs the Source (it is a Runnable), and /readyz includes Source.Ready. A Source is not
// ready until it serves a certificate, and in self-managed mode not until the caBundle
// of podmeta's MutatingWebhookConfiguration holds the CA that signed it. The
// ValidatingWebhookConfiguration of workload validation (--validating-webhook-config-name)
// gets the same caBundle in every mode, but it is optional and does not gate readiness:
// self-managed mode keeps it when it exists and podmeta may write it (a CA rotation then
// waits for it too), and cert-manager's cainjector fills it from the same Certificate. In every mode
// the gauge podmeta_serving_certificate_expiry_timestamp_seconds is the NotAfter of the
// certificate being served.
//
//   - self-managed: a CA and a serving certificate live in one Secret in podmeta's
//     namespace (ca.crt, ca.key, tls.crt, tls.key and, during a CA rotation,
//     ca-previous.crt). Every replica polls the Secret each --cert-check-interval, serves
//     its certificate from memory and writes the caBundle of every webhook in the named
//     configuration (and of the workload validation's). Renewals are computed by a pure function of the clock and the Secret
//     (plan); replicas agree through the Secret's resourceVersion (an Update that
//     conflicts is dropped and the winner's Secret adopted), so no leader election is
//     needed. A CA rotation has an overlap window: the new CA joins the caBundle first,
//     a serving certificate signed by it is issued only once the bundle has held it for
//     a check interval, and the old CA leaves the bundle two intervals after that, when
//     no replica still serves a certificate it signed.
//   - cert-manager and external: the certificate and key files in --cert-dir (a mounted
//     Secret) are served and reloaded when they change; someone else keeps the caBundle.
package certs
