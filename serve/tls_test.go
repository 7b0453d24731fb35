package serve

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"log/slog"
	"math/big"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"
)

// selfSigned makes a certificate for 127.0.0.1 and a pool that trusts it.
func selfSigned(t *testing.T) (tls.Certificate, *x509.CertPool) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "padim test"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IPAddresses: []net.IP{net.ParseIP("127.0.0.1")}, KeyUsage: x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(leaf)
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key, Leaf: leaf}, pool
}

// With a token and TLS: health is open, everything else needs the token, and
// only TLS clients that trust the certificate get through.
func TestTokenAndTLS(t *testing.T) {
	f := newFixture(t, 1)
	cert, pool := selfSigned(t)
	o := testOptions()
	o.Token = "s3cret-token"
	o.Logger = slog.New(slog.DiscardHandler)
	srv, err := New([]ModelSpec{{"wood", f.path}}, fakeLoader(&fakeConfig{}), o)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- srv.Run(ctx, ln, &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12})
	}()
	client := &http.Client{Timeout: 20 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}
	defer func() {
		client.CloseIdleConnections()
		cancel()
		if err := <-done; err != nil {
			t.Error(err)
		}
	}()
	base := "https://" + ln.Addr().String()
	call := func(method, path, token string, body []byte) (int, string, http.Header) {
		req, _ := http.NewRequest(method, base+path, strings.NewReader(string(body)))
		if token != "" {
			req.Header.Set("Authorization", "Bearer "+token)
		}
		resp, err := client.Do(req)
		if err != nil {
			t.Fatalf("%s %s: %v", method, path, err)
		}
		defer resp.Body.Close()
		var b strings.Builder
		buf := make([]byte, 4096)
		for {
			n, err := resp.Body.Read(buf)
			b.Write(buf[:n])
			if err != nil {
				break
			}
		}
		return resp.StatusCode, b.String(), resp.Header
	}
	for _, p := range []string{"/v2/health/live", "/v2/health/ready"} {
		if code, body, _ := call("GET", p, "", nil); code != 200 {
			t.Errorf("%s without a token: %d %s", p, code, body)
		}
	}
	for _, c := range []struct{ method, path string }{
		{"GET", "/v2"}, {"GET", "/v2/models/wood"}, {"GET", "/v2/models/wood/ready"}, {"GET", "/metrics"},
		{"POST", "/v1/models/wood/score"}, {"POST", "/v2/models/wood/infer"}, {"POST", "/v2/repository/models/wood/load"},
		{"GET", "/v2/models/unknown"}, // no token: no hint of what exists
	} {
		for _, tok := range []string{"", "wrong", "s3cret-token-and-more"} {
			code, body, h := call(c.method, c.path, tok, f.imgs[0])
			if code != 401 || h.Get("WWW-Authenticate") == "" || !strings.Contains(body, `"error"`) {
				t.Errorf("%s %s with token %q: %d %s", c.method, c.path, tok, code, body)
			}
		}
	}
	code, body, _ := call("POST", "/v1/models/wood/score", "s3cret-token", f.imgs[0])
	var r v1Answer
	if code != 200 || json.Unmarshal([]byte(body), &r) != nil || !relClose(r.Score, f.expect[0].Score) {
		t.Fatalf("with the token: %d %s", code, body)
	}
	if code, body, _ := call("GET", "/metrics", "s3cret-token", nil); code != 200 || !strings.Contains(body, "padim_images_scored_total") {
		t.Fatalf("metrics with the token: %d", code)
	}
	// a client that does not trust the certificate, and a plain HTTP client, fail
	untrusting := &http.Client{Timeout: 5 * time.Second}
	if resp, err := untrusting.Get(base + "/v2/health/live"); err == nil {
		resp.Body.Close()
		t.Fatal("a client without the CA got through")
	}
	if resp, err := untrusting.Get("http://" + ln.Addr().String() + "/v2/health/live"); err == nil {
		if resp.StatusCode == 200 {
			t.Fatal("plain HTTP answered 200 on the TLS port")
		}
		resp.Body.Close()
	}
}
