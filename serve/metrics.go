package serve

import (
	"slices"
	"sync"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
)

// metrics are the server's Prometheus series, on a registry of their own.
type metrics struct {
	reg        *prometheus.Registry
	requests   *prometheus.CounterVec   // route, code
	duration   *prometheus.HistogramVec // route
	inflight   prometheus.Gauge
	stage      *prometheus.HistogramVec // model, stage
	batch      *prometheus.HistogramVec // model
	images     *prometheus.CounterVec   // model
	defects    *prometheus.CounterVec   // model
	loads      *prometheus.CounterVec   // model, result
	generation *prometheus.GaugeVec     // model
	refusals   *prometheus.CounterVec   // reason: request, server, map
	grpcCalls  *prometheus.CounterVec   // method, code
	grpcTime   *prometheus.HistogramVec // method
	drift      *driftCollector
}

// latency buckets from 1 ms to ~33 s
var latencyBuckets = prometheus.ExponentialBuckets(0.001, 2, 16)

func newMetrics(mem *budget) *metrics {
	m := &metrics{
		reg: prometheus.NewRegistry(),
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "padim_http_requests_total", Help: "HTTP requests answered, by route and status code.",
		}, []string{"route", "code"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "padim_http_request_duration_seconds", Help: "Time from a request's arrival to its answer, by route.", Buckets: latencyBuckets,
		}, []string{"route"}),
		inflight: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "padim_http_requests_in_flight", Help: "Requests being handled.",
		}),
		stage: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "padim_stage_duration_seconds",
			Help: "Latency per stage. queue: a request's wait for its batch to start; batch: the pipeline call of its batch (wall); " +
				"decode, backbone, embed, score, map: the pipeline stage's busy time per image (per sample for backbone, embed and score), averaged over each batch.",
			Buckets: latencyBuckets,
		}, []string{"model", "stage"}),
		batch: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "padim_batch_images", Help: "Images per pipeline call.", Buckets: []float64{1, 2, 4, 8, 16, 32, 64, 128},
		}, []string{"model"}),
		images: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "padim_images_scored_total", Help: "Images scored.",
		}, []string{"model"}),
		defects: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "padim_defects_total", Help: "Images scored above the model's image threshold.",
		}, []string{"model"}),
		loads: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "padim_model_loads_total", Help: "Model loads and reloads, by result (ok, error).",
		}, []string{"model", "result"}),
		generation: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "padim_model_version", Help: "The version (load count) of the model being served.",
		}, []string{"model"}),
		refusals: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "padim_memory_refusals_total",
			Help: "Requests refused before any work for memory: request (over --max-request-memory, 413), server (the budget held by requests in flight, 429), map (an anomaly map over --max-map-pixels, 400).",
		}, []string{"reason"}),
		grpcCalls: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "padim_grpc_requests_total", Help: "gRPC calls answered, by method and status code.",
		}, []string{"method", "code"}),
		grpcTime: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "padim_grpc_request_duration_seconds", Help: "Time from a gRPC call's arrival to its answer, by method.", Buckets: latencyBuckets,
		}, []string{"method"}),
		drift: &driftCollector{},
	}
	m.reg.MustRegister(m.requests, m.duration, m.inflight, m.stage, m.batch, m.images, m.defects, m.loads, m.generation,
		m.refusals, m.grpcCalls, m.grpcTime, m.drift,
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "padim_request_memory_bytes", Help: "Bytes of memory held by requests in flight (bodies, what they expand to, maps, answers), as charged against the budget.",
		}, func() float64 { return float64(mem.used.Load()) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "padim_request_memory_limit_bytes", Help: "The budget of padim_request_memory_bytes (serve --max-memory less the models and pipelines).",
		}, func() float64 { return float64(mem.limit) }),
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

// driftCollector exports each model's drift statistics at scrape time; a
// series is absent where it has no meaning (no calibration scores, no
// thresholds, nothing scored yet), and padim_drift_reference_images says why.
type driftCollector struct {
	mu     sync.Mutex
	models []*model
}

var (
	descKS       = prometheus.NewDesc("padim_score_drift_ks", "Two-sample Kolmogorov–Smirnov statistic between the last --drift-window image scores and the model's calibration scores (0: alike, 1: disjoint).", []string{"model"}, nil)
	descRate     = prometheus.NewDesc("padim_defect_rate", "Share of the last --drift-window images scored above the image threshold in force.", []string{"model"}, nil)
	descExpected = prometheus.NewDesc("padim_expected_defect_rate", "Share of the model's calibration scores (good images) above the image threshold in force: the defect rate good images give.", []string{"model"}, nil)
	descWindow   = prometheus.NewDesc("padim_drift_window_images", "Image scores in the drift window.", []string{"model"}, nil)
	descRef      = prometheus.NewDesc("padim_drift_reference_images", "Calibration scores the model carries (0: no drift reference; retrain with calibration).", []string{"model"}, nil)
)

func (c *driftCollector) add(m *model) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.models = append(c.models, m)
}

// Describe sends the series' descriptions.
func (c *driftCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descKS, descRate, descExpected, descWindow, descRef} {
		ch <- d
	}
}

// Collect computes every model's statistics.
func (c *driftCollector) Collect(ch chan<- prometheus.Metric) {
	c.mu.Lock()
	models := slices.Clone(c.models)
	c.mu.Unlock()
	for _, m := range models {
		e := m.acquire()
		if e == nil {
			continue
		}
		st := e.stats()
		e.release()
		ch <- prometheus.MustNewConstMetric(descWindow, prometheus.GaugeValue, float64(st.Images), m.name)
		ch <- prometheus.MustNewConstMetric(descRef, prometheus.GaugeValue, float64(st.Calibration), m.name)
		if st.KS != nil {
			ch <- prometheus.MustNewConstMetric(descKS, prometheus.GaugeValue, *st.KS, m.name)
		}
		if st.DefectRate != nil {
			ch <- prometheus.MustNewConstMetric(descRate, prometheus.GaugeValue, *st.DefectRate, m.name)
		}
		if st.ExpectedDefectRate != nil {
			ch <- prometheus.MustNewConstMetric(descExpected, prometheus.GaugeValue, *st.ExpectedDefectRate, m.name)
		}
	}
}

// addModel registers the model's queue depth and drift.
func (m *metrics) addModel(md *model) {
	m.drift.add(md)
	m.reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "padim_queue_images", Help: "Images admitted and waiting for a batch.", ConstLabels: prometheus.Labels{"model": md.name},
	}, func() float64 { return float64(md.queued.Load()) }))
}
