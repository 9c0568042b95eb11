// Package kubefake serves kubeapi.Client from client-go's fake clientset, for unit tests of the code that takes
// a kubeapi.Client (the production code cannot import the clientset: its scheme registers every API group,
// see package kubeapi).
package kubefake

import (
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/kubernetes/fake"

	"github.com/ambit-mesh/ambit/kubeapi"
)

// Client is a fake clientset seen as a kubeapi.Client. Its Clientset field holds the objects (seed them, read
// what was patched, add reactors).
type Client struct {
	*fake.Clientset
}

var _ kubeapi.Client = Client{}

// New returns a fake client holding objects.
func New(objects ...runtime.Object) Client { return Client{fake.NewClientset(objects...)} }

// Pods returns the fake's pods of namespace.
func (c Client) Pods(namespace string) kubeapi.PodClient { return c.CoreV1().Pods(namespace) }

// Namespaces returns the fake's namespaces.
func (c Client) Namespaces() kubeapi.NamespaceClient { return c.CoreV1().Namespaces() }
