package deploy

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	kjson "sigs.k8s.io/json"
	"sigs.k8s.io/yaml"
)

// object is one decoded manifest document.
type object struct {
	file string
	kind string
	obj  any
}

var docSep = regexp.MustCompile(`(?m)^---\s*$`)

// decodeStrict decodes one YAML document into its Kubernetes API type:
// unknown fields and unknown kinds are errors.
func decodeStrict(doc []byte) (string, any, error) {
	var tm metav1.TypeMeta
	if err := yaml.Unmarshal(doc, &tm); err != nil {
		return "", nil, err
	}
	var obj any
	switch tm.APIVersion + " " + tm.Kind {
	case "batch/v1 Job":
		obj = &batchv1.Job{}
	case "apps/v1 Deployment":
		obj = &appsv1.Deployment{}
	case "v1 Service":
		obj = &corev1.Service{}
	case "v1 PersistentVolumeClaim":
		obj = &corev1.PersistentVolumeClaim{}
	default:
		return "", nil, fmt.Errorf("unexpected kind %q %q", tm.APIVersion, tm.Kind)
	}
	// YAML to JSON refusing duplicate keys, then the API server's own strict
	// JSON decoding: unknown fields and fields in the wrong case are errors
	// (encoding/json alone would match "mountpath" to mountPath)
	js, err := yaml.YAMLToJSONStrict(doc)
	if err != nil {
		return "", nil, err
	}
	strict, err := kjson.UnmarshalStrict(js, obj)
	if err != nil {
		return "", nil, err
	}
	if len(strict) > 0 {
		return "", nil, errors.Join(strict...)
	}
	return tm.Kind, obj, nil
}

func load(t *testing.T) []object {
	t.Helper()
	files, _ := filepath.Glob(filepath.Join("k8s", "*.yaml"))
	if len(files) == 0 {
		t.Fatal("no manifests in k8s/")
	}
	var objs []object
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		for _, doc := range docSep.Split(string(b), -1) {
			if strings.TrimSpace(stripComments(doc)) == "" {
				continue
			}
			kind, obj, err := decodeStrict([]byte(doc))
			if err != nil {
				t.Fatalf("%s: %v", f, err)
			}
			objs = append(objs, object{filepath.Base(f), kind, obj})
		}
	}
	return objs
}

func stripComments(s string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if !strings.HasPrefix(strings.TrimSpace(l), "#") {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}

// The strict decoder does refuse what the API types do not have.
func TestStrictDecodingRefusesUnknownFields(t *testing.T) {
	b, err := os.ReadFile(filepath.Join("k8s", "score-job.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	for _, typo := range [][2]string{{"completionMode:", "completionsMode:"}, {"mountPath:", "mountpath:"}, {"fieldPath:", "fieldpath:"}} {
		bad := bytes.Replace(b, []byte(typo[0]), []byte(typo[1]), 1)
		if _, _, err := decodeStrict(bad); err == nil {
			t.Errorf("a manifest with %q decoded without error", typo[1])
		}
	}
	if _, _, err := decodeStrict([]byte("apiVersion: v1\nkind: Pod\n")); err == nil {
		t.Error("an unexpected kind decoded")
	}
}

var claims = map[string]bool{}

func TestManifests(t *testing.T) {
	objs := load(t)
	for _, o := range objs {
		if pvc, ok := o.obj.(*corev1.PersistentVolumeClaim); ok {
			claims[pvc.Name] = true
		}
	}
	for _, c := range []string{"padim-runtime", "padim-data", "padim-work"} {
		if !claims[c] {
			t.Errorf("volumes.yaml lacks the claim %s", c)
		}
	}
	var indexed, deployments, services int
	var serveLabels map[string]string
	var servePorts []corev1.ContainerPort
	var svc *corev1.Service
	for _, o := range objs {
		switch x := o.obj.(type) {
		case *batchv1.Job:
			if checkJob(t, o.file, x) {
				indexed++
			}
		case *appsv1.Deployment:
			deployments++
			serveLabels = x.Spec.Template.Labels
			servePorts = checkServe(t, o.file, x)
		case *corev1.Service:
			services++
			svc = x
		}
	}
	if indexed != 3 || deployments != 1 || services != 1 {
		t.Fatalf("%d indexed jobs (score, train, calibrate), %d deployments, %d services", indexed, deployments, services)
	}
	// the Service reaches the Deployment's pods on a named port
	for k, v := range svc.Spec.Selector {
		if serveLabels[k] != v {
			t.Errorf("Service selector %s=%s does not select the serve pods (%v)", k, v, serveLabels)
		}
	}
	for _, p := range svc.Spec.Ports {
		if !slices.ContainsFunc(servePorts, func(cp corev1.ContainerPort) bool {
			return cp.Name == p.TargetPort.String() || strconv.Itoa(int(cp.ContainerPort)) == p.TargetPort.String()
		}) {
			t.Errorf("Service port %s targets %s, which the serve container does not expose", p.Name, p.TargetPort.String())
		}
	}
}

// checkJob checks a Job; it reports whether the Job is Indexed.
func checkJob(t reporter, file string, j *batchv1.Job) bool {
	t.Helper()
	spec := j.Spec.Template.Spec
	if spec.RestartPolicy != corev1.RestartPolicyNever {
		t.Errorf("%s: restartPolicy %q, want Never (a failed pod is replaced, and resumes)", file, spec.RestartPolicy)
	}
	if len(spec.Containers) != 1 {
		t.Fatalf("%s: %d containers", file, len(spec.Containers))
	}
	c := spec.Containers[0]
	checkMounts(t, file, spec, c)
	argv := strings.Join(append(slices.Clone(c.Command), c.Args...), " ")
	shardArg := regexp.MustCompile(`--shard[ =]auto/(\d+)`).FindStringSubmatch(argv)
	isIndexed := j.Spec.CompletionMode != nil && *j.Spec.CompletionMode == batchv1.IndexedCompletion
	if !isIndexed {
		if shardArg != nil || strings.Contains(argv, "JOB_COMPLETION_INDEX") {
			t.Errorf("%s: a non-indexed Job uses the shard index", file)
		}
		if j.Spec.Completions == nil || *j.Spec.Completions != 1 {
			t.Errorf("%s: a single-pod Job with completions %v", file, j.Spec.Completions)
		}
		return false
	}
	// Indexed: N pods, N in --shard auto/N, the index in the environment
	if j.Spec.Completions == nil || j.Spec.Parallelism == nil {
		t.Fatalf("%s: an Indexed Job without completions and parallelism", file)
	}
	n, par := int(*j.Spec.Completions), int(*j.Spec.Parallelism)
	if shardArg == nil {
		t.Fatalf("%s: an Indexed Job whose padim has no --shard auto/N: %s", file, argv)
	}
	if got, _ := strconv.Atoi(shardArg[1]); got != n {
		t.Errorf("%s: --shard auto/%d but completions %d: indices past N-1 would be refused, shards below never run", file, got, n)
	}
	if par < 1 || par > n {
		t.Errorf("%s: parallelism %d with %d completions", file, par, n)
	}
	if j.Spec.BackoffLimitPerIndex == nil || *j.Spec.BackoffLimitPerIndex < 1 {
		t.Errorf("%s: no backoffLimitPerIndex: a lost pod's index would not be retried on its own", file)
	}
	var idx *corev1.EnvVar
	for i := range c.Env {
		if c.Env[i].Name == "JOB_COMPLETION_INDEX" {
			idx = &c.Env[i]
		}
	}
	if idx == nil || idx.ValueFrom == nil || idx.ValueFrom.FieldRef == nil || idx.ValueFrom.FieldRef.FieldPath != "metadata.annotations['batch.kubernetes.io/job-completion-index']" {
		t.Errorf("%s: JOB_COMPLETION_INDEX is not taken from the completion-index annotation: %+v", file, idx)
	}
	// $(VAR) references name variables the container defines
	for _, m := range regexp.MustCompile(`\$\(([A-Z_]+)\)`).FindAllStringSubmatch(argv, -1) {
		if !slices.ContainsFunc(c.Env, func(e corev1.EnvVar) bool { return e.Name == m[1] }) {
			t.Errorf("%s: $(%s) in the arguments is not a variable of the container", file, m[1])
		}
	}
	if p := j.Spec.PodFailurePolicy; p != nil {
		for _, r := range p.Rules {
			if r.OnExitCodes != nil && slices.Contains(r.OnExitCodes.Values, 0) {
				t.Errorf("%s: a failure rule on exit code 0", file)
			}
		}
	}
	return true
}

var absPath = regexp.MustCompile(`(^|[\s=])(/[A-Za-z0-9_.$()*/\-]+)`)

// checkMounts: every mount has its volume, claims exist, read-only where
// padim only reads, and every path the container is given lies under a mount
// (writable where padim writes).
func checkMounts(t reporter, file string, spec corev1.PodSpec, c corev1.Container) {
	t.Helper()
	vols := map[string]corev1.Volume{}
	for _, v := range spec.Volumes {
		vols[v.Name] = v
		if v.PersistentVolumeClaim != nil && !claims[v.PersistentVolumeClaim.ClaimName] {
			t.Errorf("%s: volume %s claims %s, which volumes.yaml does not define", file, v.Name, v.PersistentVolumeClaim.ClaimName)
		}
	}
	mounts := map[string]corev1.VolumeMount{}
	for _, m := range c.VolumeMounts {
		v, ok := vols[m.Name]
		if !ok {
			t.Errorf("%s: mount %s has no volume", file, m.Name)
			continue
		}
		mounts[m.MountPath] = m
		if pvc := v.PersistentVolumeClaim; pvc != nil && (pvc.ClaimName == "padim-runtime" || pvc.ClaimName == "padim-data") && !(m.ReadOnly && pvc.ReadOnly) {
			t.Errorf("%s: %s (%s) is mounted writable: padim only reads it", file, m.MountPath, pvc.ClaimName)
		}
	}
	under := func(p string) (corev1.VolumeMount, bool) {
		for mp, m := range mounts {
			if p == mp || strings.HasPrefix(p, strings.TrimSuffix(mp, "/")+"/") {
				return m, true
			}
		}
		return corev1.VolumeMount{}, false
	}
	for _, e := range c.Env {
		if e.Name == "ONNXRUNTIME_LIB" {
			m, ok := under(e.Value)
			if !ok || vols[m.Name].PersistentVolumeClaim == nil || vols[m.Name].PersistentVolumeClaim.ClaimName != "padim-runtime" {
				t.Errorf("%s: ONNXRUNTIME_LIB=%s is not on the padim-runtime volume", file, e.Value)
			}
		}
	}
	args := append(slices.Clone(c.Command), c.Args...)
	for i, a := range args {
		for _, m := range absPath.FindAllStringSubmatch(a, -1) {
			p := m[2]
			if strings.HasPrefix(p, "/bin/") || strings.HasPrefix(p, "/usr/") {
				continue
			}
			mt, ok := under(p)
			if !ok {
				t.Errorf("%s: %s is on no mounted volume", file, p)
				continue
			}
			writes := i > 0 && slices.Contains([]string{"--out", "--stats-out"}, args[i-1]) ||
				regexp.MustCompile(`--(out|stats-out)[ =]`+regexp.QuoteMeta(p)).MatchString(a)
			if writes && mt.ReadOnly {
				t.Errorf("%s: padim writes %s on a read-only mount", file, p)
			}
		}
	}
}

// checkServe checks the padim serve Deployment and returns its ports.
func checkServe(t reporter, file string, d *appsv1.Deployment) []corev1.ContainerPort {
	t.Helper()
	if d.Spec.Selector == nil {
		t.Fatalf("%s: no selector", file)
	}
	for k, v := range d.Spec.Selector.MatchLabels {
		if d.Spec.Template.Labels[k] != v {
			t.Errorf("%s: selector %s=%s does not match the pod labels", file, k, v)
		}
	}
	spec := d.Spec.Template.Spec
	c := spec.Containers[0]
	checkMounts(t, file, spec, c)
	if len(c.Args) == 0 || c.Args[0] != "serve" {
		t.Fatalf("%s: not padim serve: %v", file, c.Args)
	}
	flag := func(name string) string {
		for i, a := range c.Args {
			if a == name && i+1 < len(c.Args) {
				return c.Args[i+1]
			}
			if v, ok := strings.CutPrefix(a, name+"="); ok {
				return v
			}
		}
		return ""
	}
	addr := flag("--addr")
	_, port, ok := strings.Cut(addr, ":")
	if !ok || len(c.Ports) != 1 || port != strconv.Itoa(int(c.Ports[0].ContainerPort)) {
		t.Errorf("%s: --addr %s does not listen on the container port %v", file, addr, c.Ports)
	}
	if _, path, ok := strings.Cut(flag("--model"), "="); !ok || !strings.HasSuffix(path, ".padim") {
		t.Errorf("%s: --model %q: want NAME=FILE.padim", file, flag("--model"))
	}
	tok := flag("--token-file")
	var tokenVol string
	for _, m := range c.VolumeMounts {
		if strings.HasPrefix(tok, m.MountPath+"/") {
			tokenVol = m.Name
		}
	}
	if v := slices.IndexFunc(spec.Volumes, func(v corev1.Volume) bool { return v.Name == tokenVol && v.Secret != nil }); v < 0 {
		t.Errorf("%s: --token-file %s is not on a Secret volume", file, tok)
	}
	for name, p := range map[string]*corev1.Probe{"readiness": c.ReadinessProbe, "liveness": c.LivenessProbe, "startup": c.StartupProbe} {
		want := "/v2/health/ready"
		if name == "liveness" {
			want = "/v2/health/live"
		}
		if p == nil || p.HTTPGet == nil || p.HTTPGet.Path != want || p.HTTPGet.Port.String() != c.Ports[0].Name {
			t.Errorf("%s: %s probe %+v: want GET %s on port %s", file, name, p, want, c.Ports[0].Name)
		}
	}
	if d.Spec.Template.Annotations["prometheus.io/path"] != "/metrics" || d.Spec.Template.Annotations["prometheus.io/port"] != port {
		t.Errorf("%s: Prometheus annotations %v", file, d.Spec.Template.Annotations)
	}
	return c.Ports
}

// The image and the manifests agree on where ONNX Runtime is, and the image
// runs padim.
func TestDockerfile(t *testing.T) {
	b, err := os.ReadFile("Dockerfile")
	if err != nil {
		t.Fatal(err)
	}
	s := string(b)
	for _, want := range []string{"ENV ONNXRUNTIME_LIB=/opt/onnxruntime/libonnxruntime.so.1", `ENTRYPOINT ["/usr/local/bin/padim"]`, "go build", "./cmd/padim", "USER 65532"} {
		if !strings.Contains(s, want) {
			t.Errorf("Dockerfile lacks %q", want)
		}
	}
	if strings.Contains(s, "COPY .cache") || strings.Contains(s, "libonnxruntime.so.1 /") {
		t.Error("the image must not carry ONNX Runtime: it comes from a volume")
	}
}

// reporter is what the checks report to: a test, or a recorder.
type reporter interface {
	Helper()
	Errorf(format string, a ...any)
	Fatalf(format string, a ...any)
}

type recorder struct{ msgs []string }

type stop struct{}

func (r *recorder) Helper() {}
func (r *recorder) Errorf(format string, a ...any) {
	r.msgs = append(r.msgs, fmt.Sprintf(format, a...))
}
func (r *recorder) Fatalf(format string, a ...any) {
	r.msgs = append(r.msgs, fmt.Sprintf(format, a...))
	panic(stop{})
}

func (r *recorder) run(f func()) []string {
	defer func() {
		if v := recover(); v != nil {
			if _, ok := v.(stop); !ok {
				panic(v)
			}
		}
	}()
	f()
	return r.msgs
}

// The checks do catch broken manifests: each edit of the score Job or the
// Deployment below must be reported.
func TestChecksCatchMistakes(t *testing.T) {
	load(t) // the claims
	jobYAML, _ := os.ReadFile(filepath.Join("k8s", "score-job.yaml"))
	serveYAML, _ := os.ReadFile(filepath.Join("k8s", "serve.yaml"))
	serveDep := docSep.Split(string(serveYAML), -1)[0]
	for _, c := range []struct{ what, from, to, want string }{
		{"job", "completions: 8", "completions: 6", "--shard auto/8 but completions 6"},
		{"job", "parallelism: 8", "parallelism: 9", "parallelism 9"},
		{"job", "completionMode: Indexed", "completionMode: NonIndexed", "uses the shard index"},
		{"job", "job-completion-index", "job-index", "annotation"},
		{"job", "restartPolicy: Never", "restartPolicy: OnFailure", "restartPolicy"},
		{"job", "mountPath: /work", "mountPath: /scratch", "/work/model.padim is on no mounted volume"},
		{"job", "claimName: padim-data\n            readOnly: true", "claimName: padim-data", "mounted writable"},
		{"job", "claimName: padim-work", "claimName: padim-wrok", "does not define"},
		{"job", "value: /opt/onnxruntime/libonnxruntime.so.1", "value: /usr/lib/libonnxruntime.so.1", "padim-runtime"},
		{"job", "backoffLimitPerIndex: 3", "backoffLimitPerIndex: 0", "backoffLimitPerIndex"},
		{"serve", "path: /v2/health/live", "path: /healthz", "liveness"},
		{"serve", "- 0.0.0.0:8080", "- 0.0.0.0:9090", "container port"},
		{"serve", "secretName: padim-token", "secretName: padim-token\n            optional: true", ""},
		{"serve", "- name: token\n          secret:", "- name: token\n          emptyDir: {}\n          x-secret:", "unknown field"},
	} {
		src := string(jobYAML)
		if c.what == "serve" {
			src = serveDep
		}
		from, to := strings.ReplaceAll(c.from, "\\n", "\n"), strings.ReplaceAll(c.to, "\\n", "\n")
		if !strings.Contains(src, from) {
			t.Fatalf("%q is not in the %s manifest", from, c.what)
		}
		_, obj, err := decodeStrict([]byte(strings.Replace(src, from, to, 1)))
		var msgs []string
		if err != nil {
			msgs = []string{err.Error()}
		} else {
			r := &recorder{}
			msgs = r.run(func() {
				switch x := obj.(type) {
				case *batchv1.Job:
					checkJob(r, "edited", x)
				case *appsv1.Deployment:
					checkServe(r, "edited", x)
				}
			})
		}
		joined := strings.Join(msgs, "; ")
		if c.want == "" {
			if len(msgs) > 0 {
				t.Errorf("%s → %s: reported %s", c.from, c.to, joined)
			}
			continue
		}
		if !strings.Contains(joined, c.want) {
			t.Errorf("%s → %s: want a report with %q, got %q", c.from, c.to, c.want, joined)
		}
	}
	if _, _, err := decodeStrict([]byte("apiVersion: v1\nkind: Service\nmetadata:\n  name: a\n  name: b\n")); err == nil {
		t.Error("a duplicate key decoded")
	}
}
