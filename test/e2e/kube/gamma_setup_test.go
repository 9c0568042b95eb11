//go:build e2e

package kube

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"os"
	"path/filepath"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes"

	"github.com/ambit-mesh/ambit/test/e2e"
	"github.com/ambit-mesh/ambit/test/kubelet"
)

// meshEchoEnv names the directory of Istio's echo server and client (hack/peers/build-istio-echo.sh prints it).
const meshEchoEnv = "AMBIT_ISTIO_ECHO_BIN_DIR"

// meshEchoPeer is the conformance suite's echo image as the test kubelet runs it, or why it cannot.
type meshEchoPeer struct {
	image   kubelet.Image
	missing string
}

// findMeshEcho locates the echo peer (the environment, else the peer cache) and makes the image the suite's
// manifests name (registry.k8s.io/gateway-api/echo-advanced): the server as entrypoint at /usr/local/bin/server,
// the client on the PATH (the suite execs `client ...`), and the certificate the manifests pass with
// --crt=/cert.crt --key=/cert.key, a self-signed one written into dir as the image ships one.
func findMeshEcho(dir string) (meshEchoPeer, error) {
	bin := os.Getenv(meshEchoEnv)
	if bin == "" {
		cache := os.Getenv(e2e.PeerCacheEnv)
		if cache == "" {
			cache = e2e.DefaultPeerCache
		}
		bin = filepath.Join(cache, "istio-echo-"+e2e.IstioVersion, "bin")
	}
	server, client := filepath.Join(bin, "server"), filepath.Join(bin, "client")
	for _, f := range []string{server, client} {
		if _, err := os.Stat(f); err != nil {
			return meshEchoPeer{missing: fmt.Sprintf("the echo peer is missing (%v): build it with hack/peers/build-istio-echo.sh", err)}, nil
		}
	}
	crt, key, err := writeSelfSigned(dir)
	if err != nil {
		return meshEchoPeer{}, err
	}
	return meshEchoPeer{image: kubelet.Image{Binary: server, Path: "/usr/local/bin/server",
		Files: map[string]string{"/usr/local/bin/client": client, "/cert.crt": crt, "/cert.key": key}}}, nil
}

// writeSelfSigned writes a self-signed ECDSA certificate and its key into dir.
func writeSelfSigned(dir string) (crt, key string, err error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", "", err
	}
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return "", "", fmt.Errorf("generate key: %w", err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "echo"},
		DNSNames: []string{"*"}, NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &k.PublicKey, k)
	if err != nil {
		return "", "", fmt.Errorf("create certificate: %w", err)
	}
	kder, err := x509.MarshalPKCS8PrivateKey(k)
	if err != nil {
		return "", "", fmt.Errorf("marshal key: %w", err)
	}
	crt, key = filepath.Join(dir, "cert.crt"), filepath.Join(dir, "cert.key")
	if err := os.WriteFile(crt, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644); err != nil {
		return "", "", err
	}
	if err := os.WriteFile(key, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kder}), 0o644); err != nil {
		return "", "", err
	}
	return crt, key, nil
}

// reserveClusterDNS creates kube-system/kube-dns with clusterDNSIP, as a cluster's DNS add-on does, so that the
// API server gives that address to no other Service.
func reserveClusterDNS(ctx context.Context, client kubernetes.Interface) error {
	svc := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "kube-dns", Namespace: "kube-system", Labels: map[string]string{"k8s-app": "kube-dns"}},
		Spec: corev1.ServiceSpec{ClusterIP: clusterDNSIP, Ports: []corev1.ServicePort{
			{Name: "dns-tcp", Protocol: corev1.ProtocolTCP, Port: 53, TargetPort: intstr.FromInt32(53)},
		}},
	}
	if _, err := client.CoreV1().Services("kube-system").Create(ctx, svc, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("create the kube-dns service: %w", err)
	}
	return nil
}
