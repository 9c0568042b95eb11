package main

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"
	"sync"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	gwv1 "sigs.k8s.io/gateway-api/apis/v1"
	"sigs.k8s.io/yaml"

	"github.com/ambit-mesh/ambit/mesh/istio"
)

// The cluster subcommands of `ambitctl waypoint` reproduce istioctl's (istioctl/pkg/waypoint/waypoint.go):
// the same flags, output lines on the same streams, error texts and exit codes (1 for every failure, as
// istioctl's). docs/waypoint-rules.md §6 describes them.

const (
	waypointClass     = istio.WaypointClassName
	labelRevision     = istio.LabelRevision
	fieldManager      = "ambitctl"
	waypointTimeout   = 90 * time.Second
	conditionReady    = string(gwv1.GatewayConditionProgrammed)
	pollInterval      = time.Second
	statusTrue        = "True"
	statusFalse       = "False"
	noWaypointsFound  = "No waypoints found."
	defaultRevision   = "default"
	trafficTypeAbsent = "none"
)

// waypointPoll is the status poll period; tests shorten it.
var waypointPoll = pollInterval

// addClusterCommands adds apply, list, status and delete, and istioctl's cluster flags, to `waypoint`.
func addClusterCommands(cmd *cobra.Command, wf *waypointFlags) {
	cf := &clusterFlags{}
	cf.register(cmd)
	cmd.AddCommand(newApplyCmd(wf, cf), newListCmd(wf, cf), newStatusCmd(wf, cf), newDeleteCmd(wf, cf))
}

func newApplyCmd(wf *waypointFlags, cf *clusterFlags) *cobra.Command {
	var enroll, overwrite, wait bool
	var timeout time.Duration
	cmd := &cobra.Command{
		Use:         "apply",
		Annotations: istioctlParity(),
		Short:       "Apply a waypoint configuration",
		Long:        "Apply a waypoint configuration to the cluster",
		Example: `  # Apply a waypoint to the current namespace
  ambitctl waypoint apply

  # Apply a waypoint to a specific namespace and wait for it to be ready
  ambitctl waypoint apply --namespace default --wait`,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := cf.clients()
			if err != nil {
				return err
			}
			ctx := cmd.Context()
			out := cmd.OutOrStdout()
			ns := cf.namespaceOrDefault(wf.namespace)
			nsObj, err := getNamespace(ctx, c, ns)
			if err != nil {
				return err
			}
			if enroll {
				if !overwrite && nsObj.Labels[istio.LabelUseWaypoint] != "" {
					fmt.Fprintf(out, "⚠️ Warning: namespace (%s) already has an enrolled Waypoint. Consider "+
						"adding the `--overwrite` flag to your apply command.\n", ns)
					return nil
				}
				ambient, err := getNamespace(ctx, c, ns)
				if err != nil {
					return fmt.Errorf("failed to check if namespace is labeled ambient: %v", err)
				}
				if ambient.Labels[istio.LabelDataplaneMode] != istio.DataplaneModeAmbient {
					fmt.Fprintf(out, "⚠️ Warning: namespace is not enrolled in ambient. Consider running\t"+
						"`kubectl label namespace %s istio.io/dataplane-mode=ambient`\n", ns)
				}
			}
			gw, err := makeGateway(wf, ns)
			if err != nil {
				return fmt.Errorf("failed to create gateway: %v", err)
			}
			body, err := yaml.Marshal(gw)
			if err != nil {
				return err
			}
			gws := c.gateway.GatewayV1().Gateways(ns)
			if _, err := gws.Patch(ctx, gw.Name, types.ApplyPatchType, body, metav1.PatchOptions{FieldManager: fieldManager}); err != nil {
				if apierrors.IsNotFound(err) {
					return fmt.Errorf("missing Kubernetes Gateway CRDs need to be installed before applying a waypoint: %s", err)
				}
				return err
			}
			fmt.Fprintf(out, "✅ waypoint %v/%v applied\n", gw.Namespace, gw.Name)
			if wait {
				if err := waitProgrammed(ctx, c, ns, gw.Name, timeout); err != nil {
					return err
				}
				fmt.Fprintf(out, "✅ waypoint %v/%v is ready!\n", gw.Namespace, gw.Name)
			}
			if enroll {
				if err := labelNamespace(ctx, c, ns, wf.name); err != nil {
					return fmt.Errorf("failed to label namespace with waypoint: %v", err)
				}
				fmt.Fprintf(out, "✅ namespace %v labeled with \"%v: %v\"\n", ns, istio.LabelUseWaypoint, gw.Name)
			}
			return nil
		},
	}
	fs := cmd.Flags()
	fs.StringVar(&wf.trafficType, "for", "", fmt.Sprintf("Specify the traffic type %v for the waypoint", validTrafficTypes))
	fs.BoolVar(&enroll, "enroll-namespace", false, "If set, the namespace will be labeled with the waypoint name")
	fs.BoolVar(&overwrite, "overwrite", false, "Overwrite the existing Waypoint used by the namespace")
	fs.StringVarP(&wf.revision, "revision", "r", "", "The revision to label the waypoint with")
	fs.BoolVarP(&wait, "wait", "w", false, "Wait for the waypoint to be ready")
	fs.DurationVar(&timeout, "waypoint-timeout", waypointTimeout, "Timeout for waiting for waypoint ready")
	return cmd
}

// getNamespace fetches ns with istioctl's error wording.
func getNamespace(ctx context.Context, c *clusterClients, ns string) (*corev1.Namespace, error) {
	obj, err := c.kube.CoreV1().Namespaces().Get(ctx, ns, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return nil, fmt.Errorf("namespace: %s not found", ns)
	} else if err != nil {
		return nil, fmt.Errorf("failed to get namespace %s: %v", ns, err)
	}
	return obj, nil
}

// labelNamespace sets istio.io/use-waypoint=name on ns (read, then update, as istioctl).
func labelNamespace(ctx context.Context, c *clusterClients, ns, name string) error {
	obj, err := getNamespace(ctx, c, ns)
	if err != nil {
		return err
	}
	if obj.Labels == nil {
		obj.Labels = map[string]string{}
	}
	obj.Labels[istio.LabelUseWaypoint] = name
	if _, err := c.kube.CoreV1().Namespaces().Update(ctx, obj, metav1.UpdateOptions{}); err != nil {
		return fmt.Errorf("failed to update namespace %s: %v", ns, err)
	}
	return nil
}

// programmed reports whether gw's Programmed condition is True.
func programmed(gw *gwv1.Gateway) bool {
	for _, c := range gw.Status.Conditions {
		if c.Type == conditionReady && string(c.Status) == statusTrue {
			return true
		}
	}
	return false
}

// waitProgrammed polls every second until the waypoint is Programmed or timeout has passed.
func waitProgrammed(ctx context.Context, c *clusterClients, ns, name string, timeout time.Duration) error {
	start := time.Now()
	t := time.NewTicker(waypointPoll)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-t.C:
		}
		gw, err := c.gateway.GatewayV1().Gateways(ns).Get(ctx, name, metav1.GetOptions{})
		if err == nil && programmed(gw) {
			return nil
		}
		if time.Since(start) > timeout {
			return timedOut("timed out while waiting for waypoint", gw, err)
		}
	}
}

// timedOut formats istioctl's timeout error. gw is what the last Get returned: empty when it failed.
func timedOut(msg string, gw *gwv1.Gateway, err error) error {
	if gw == nil {
		gw = &gwv1.Gateway{}
	}
	s := fmt.Sprintf("%s\t%v/%v", msg, gw.Namespace, gw.Name)
	if err != nil {
		s += fmt.Sprintf(": %s", err)
	}
	return errors.New(s)
}

// listGateways lists every Gateway of ns ("" for all namespaces), sorted by namespace and name.
func listGateways(ctx context.Context, c *clusterClients, ns, selector string) ([]gwv1.Gateway, error) {
	l, err := c.gateway.GatewayV1().Gateways(ns).List(ctx, metav1.ListOptions{LabelSelector: selector})
	if err != nil {
		return nil, err
	}
	slices.SortFunc(l.Items, func(a, b gwv1.Gateway) int {
		return cmp.Or(cmp.Compare(a.Namespace, b.Namespace), cmp.Compare(a.Name, b.Name))
	})
	return l.Items, nil
}

func waypointsOnly(gws []gwv1.Gateway) []gwv1.Gateway {
	var out []gwv1.Gateway
	for _, gw := range gws {
		if gw.Spec.GatewayClassName == waypointClass {
			out = append(out, gw)
		}
	}
	return out
}

func newListCmd(wf *waypointFlags, cf *clusterFlags) *cobra.Command {
	var all bool
	cmd := &cobra.Command{
		Use:         "list",
		Annotations: istioctlParity(),
		Short:       "List managed waypoint configurations",
		Long:        "List managed waypoint configurations in the cluster",
		Example: `  # List all waypoints in a specific namespace
  ambitctl waypoint list --namespace default

  # List all waypoints in the cluster
  ambitctl waypoint list -A`,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := cf.clients()
			if err != nil {
				return err
			}
			ns := ""
			if !all {
				ns = cf.namespaceOrDefault(wf.namespace)
			}
			gws, err := listGateways(cmd.Context(), c, ns, "")
			if err != nil {
				return err
			}
			return writeWaypointList(cmd.OutOrStdout(), gws, all)
		},
	}
	cmd.Flags().BoolVarP(&all, "all-namespaces", "A", false, "List all waypoints in all namespaces")
	return cmd
}

// writeWaypointList prints istioctl's waypoint table for gws (every Gateway of the scope, sorted).
func writeWaypointList(out io.Writer, gws []gwv1.Gateway, all bool) error {
	if len(gws) == 0 {
		_, err := fmt.Fprintln(out, noWaypointsFound)
		return err
	}
	w := newWaypointTable(out)
	if all {
		fmt.Fprintln(w, "NAMESPACE\tNAME\tREVISION\tTRAFFIC TYPE\tPROGRAMMED")
	} else {
		fmt.Fprintln(w, "NAME\tREVISION\tTRAFFIC TYPE\tPROGRAMMED")
	}
	for _, gw := range waypointsOnly(gws) {
		prog := statusFalse
		for _, c := range gw.Status.Conditions {
			if c.Type == conditionReady {
				prog = string(c.Status)
			}
		}
		rev := cmp.Or(gw.Labels[labelRevision], defaultRevision)
		traffic := cmp.Or(gw.Labels[istio.LabelWaypointFor], trafficTypeAbsent)
		if all {
			fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\n", gw.Namespace, gw.Name, rev, traffic, prog)
		} else {
			fmt.Fprintf(w, "%s\t%s\t%s\t%s\n", gw.Name, rev, traffic, prog)
		}
	}
	return w.Flush()
}

// newWaypointTable lays out like istioctl's waypoint tables (padding 5).
func newWaypointTable(out io.Writer) *tabwriter.Writer {
	return new(tabwriter.Writer).Init(out, 0, 8, 5, ' ', 0)
}

func newStatusCmd(wf *waypointFlags, cf *clusterFlags) *cobra.Command {
	var all, wait bool
	var timeout time.Duration
	cmd := &cobra.Command{
		Use:         "status",
		Annotations: istioctlParity(),
		Short:       "Show the status of waypoints",
		Long:        "Show the status of waypoints in the cluster",
		Example: `  # Show the status of the waypoint in the default namespace
  ambitctl waypoint status

  # Show the status of the waypoint in a specific namespace
  ambitctl waypoint status --namespace default

  # Show the status of the waypoint in all namespaces
  ambitctl waypoint status --all-namespaces`,
		RunE: func(cmd *cobra.Command, args []string) error {
			if len(args) != 0 {
				return fmt.Errorf("unknown subcommand %q", args[0])
			}
			c, err := cf.clients()
			if err != nil {
				return err
			}
			ns := cf.namespaceOrDefault(wf.namespace)
			if all {
				ns = ""
			}
			gws, err := listGateways(cmd.Context(), c, ns, "")
			if err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			if len(gws) == 0 {
				_, err := fmt.Fprintln(out, noWaypointsFound)
				return err
			}
			w := newWaypointTable(out)
			if err := writeWaypointStatus(cmd.Context(), w, c, waypointsOnly(gws), ns == "", wait, timeout); err != nil {
				return fmt.Errorf("failed to print waypoint status: %v", err)
			}
			return w.Flush()
		},
	}
	fs := cmd.Flags()
	fs.BoolVarP(&wait, "wait", "w", true, "Wait for the waypoint to be ready")
	fs.DurationVar(&timeout, "waypoint-timeout", waypointTimeout, "Timeout for retrieving status for waypoint")
	fs.BoolVarP(&all, "all-namespaces", "A", false, "Show the status of waypoints in all namespaces")
	return cmd
}

// writeWaypointStatus polls each waypoint in turn every second and writes one row per poll, from the
// Programmed condition when it is True and otherwise from the last condition listed (a Gateway without
// conditions repeats the previous row's condition, as istioctl's shared variable does). It stops polling a
// waypoint when it is Programmed, or after one row without wait; rows are only flushed by the caller.
func writeWaypointStatus(ctx context.Context, w io.Writer, c *clusterClients, gws []gwv1.Gateway, allNS, wait bool, timeout time.Duration) error {
	var cond metav1.Condition
	start := time.Now()
	t := time.NewTicker(waypointPoll)
	defer t.Stop()
	if allNS {
		fmt.Fprintln(w, "NAMESPACE\tNAME\tSTATUS\tTYPE\tREASON\tMESSAGE")
	} else {
		fmt.Fprintln(w, "NAME\tSTATUS\tTYPE\tREASON\tMESSAGE")
	}
	for _, gw := range gws {
		for {
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-t.C:
			}
			ready := false
			cur, err := c.gateway.GatewayV1().Gateways(gw.Namespace).Get(ctx, gw.Name, metav1.GetOptions{})
			if cur == nil {
				cur = &gwv1.Gateway{}
			}
			if err == nil {
				for _, cond = range cur.Status.Conditions {
					if cond.Type == conditionReady && string(cond.Status) == statusTrue {
						ready = true
						break
					}
				}
			}
			if allNS {
				fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\t%s\n", cur.Namespace, cur.Name, cond.Status, cond.Type, cond.Reason, cond.Message)
			} else {
				fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\n", cur.Name, cond.Status, cond.Type, cond.Reason, cond.Message)
			}
			if !wait || ready {
				break
			}
			if time.Since(start) > timeout {
				return timedOut("timed out while retrieving status for waypoint", cur, err)
			}
		}
	}
	return nil
}

func newDeleteCmd(wf *waypointFlags, cf *clusterFlags) *cobra.Command {
	var all bool
	var revision string
	cmd := &cobra.Command{
		Use:         "delete",
		Annotations: istioctlParity(),
		Short:       "Delete a waypoint configuration",
		Long:        "Delete a waypoint configuration from the cluster",
		Example: `  # Delete a waypoint by name, which can obtain from ambitctl waypoint list
  ambitctl waypoint delete waypoint-name --namespace default

  # Delete several waypoints by name
  ambitctl waypoint delete waypoint-name1 waypoint-name2 --namespace default

  # Delete all waypoints in a specific namespace
  ambitctl waypoint delete --all --namespace default

  # Delete specific revision waypoints in a namespace
  ambitctl waypoint delete --revision v1 --namespace default`,
		RunE: func(cmd *cobra.Command, args []string) error {
			// Checked here rather than as cobra Args, so that the exit code is istioctl's (1).
			if (all || revision != "") && len(args) > 0 {
				return errors.New("cannot specify waypoint names when deleting all waypoints")
			}
			if !(all || revision != "") && len(args) == 0 {
				return errors.New("must specify a waypoint name or delete all using --all or delete specific revision using --revision")
			}
			c, err := cf.clients()
			if err != nil {
				return err
			}
			ns := cf.namespaceOrDefault(wf.namespace)
			if all || revision != "" {
				args = nil
			}
			return deleteWaypoints(cmd.Context(), cmd.OutOrStdout(), c, ns, args, revision)
		},
	}
	cmd.Flags().BoolVar(&all, "all", false, "Delete all waypoints in the namespace")
	cmd.Flags().StringVarP(&revision, "revision", "r", "", "Delete the specified version of the waypoint in the namespace")
	return cmd
}

// deleteWaypoints deletes the named waypoints of ns (nil names: every waypoint, or those of revision),
// concurrently, printing a line per waypoint; names that are not waypoints are reported not found.
func deleteWaypoints(ctx context.Context, out io.Writer, c *clusterClients, ns string, names []string, revision string) error {
	var targets []string
	if names == nil {
		selector := ""
		if revision != "" {
			selector = labelRevision + "=" + revision
		}
		gws, err := listGateways(ctx, c, ns, selector)
		if err != nil {
			return err
		}
		for _, gw := range waypointsOnly(gws) {
			targets = append(targets, gw.Name)
		}
	} else {
		gws, err := listGateways(ctx, c, ns, "")
		if err != nil {
			return err
		}
		known := map[string]bool{}
		for _, gw := range waypointsOnly(gws) {
			known[gw.Name] = true
		}
		for _, n := range names {
			if known[n] {
				targets = append(targets, n)
			} else {
				fmt.Fprintf(out, "waypoint %s/%s not found\n", ns, n)
			}
		}
	}
	var mu sync.Mutex
	var errs []error
	var wg sync.WaitGroup
	for _, name := range targets {
		wg.Go(func() {
			err := c.gateway.GatewayV1().Gateways(ns).Delete(ctx, name, metav1.DeleteOptions{})
			mu.Lock()
			defer mu.Unlock()
			switch {
			case err == nil:
				fmt.Fprintf(out, "waypoint %v/%v deleted\n", ns, name)
			case apierrors.IsNotFound(err):
				fmt.Fprintf(out, "waypoint %v/%v not found\n", ns, name)
			default:
				errs = append(errs, err)
			}
		})
	}
	wg.Wait()
	return multiError(errs)
}

// multiError aggregates errors and formats them as hashicorp/go-multierror does (istioctl aggregates delete
// failures with it).
func multiError(errs []error) error {
	if len(errs) == 0 {
		return nil
	}
	return aggregate(errs)
}

type aggregate []error

func (a aggregate) Error() string {
	if len(a) == 1 {
		return fmt.Sprintf("1 error occurred:\n\t* %s\n\n", a[0])
	}
	points := make([]string, len(a))
	for i, err := range a {
		points[i] = "* " + err.Error()
	}
	return fmt.Sprintf("%d errors occurred:\n\t%s\n\n", len(a), strings.Join(points, "\n\t"))
}

func (a aggregate) Unwrap() []error { return a }
