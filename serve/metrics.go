package serve

import (
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
}

// latency buckets from 1 ms to ~33 s
var latencyBuckets = prometheus.ExponentialBuckets(0.001, 2, 16)

func newMetrics() *metrics {
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
	}
	m.reg.MustRegister(m.requests, m.duration, m.inflight, m.stage, m.batch, m.images, m.defects, m.loads, m.generation,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

// addModel registers the model's queue depth.
func (m *metrics) addModel(md *model) {
	m.reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "padim_queue_images", Help: "Images admitted and waiting for a batch.", ConstLabels: prometheus.Labels{"model": md.name},
	}, func() float64 { return float64(md.queued.Load()) }))
}
