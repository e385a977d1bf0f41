package metrics

import (
	"net/http"
	"strings"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/embedwps/pubsub"
	"github.com/embedwps/pubsub/rest"
)

// BrokerStats are a broker's counters (natsbroker.Stats has them).
type BrokerStats struct {
	Published, Received, Dropped, Errors int64
}

// Watch makes the metrics read svc's counters and gauges at each scrape:
// connections per hub, slow clients, buffers, rate limits, the cluster.
func (m *Metrics) Watch(svc *pubsub.Service) {
	m.mu.Lock()
	m.svc = svc
	m.mu.Unlock()
}

// WatchBroker makes the metrics read a broker's counters at each scrape,
// for example func() metrics.BrokerStats { return metrics.BrokerStats(nb.Stats()) }
// with a *natsbroker.Broker.
func (m *Metrics) WatchBroker(stats func() BrokerStats) {
	m.mu.Lock()
	m.broker = stats
	m.mu.Unlock()
}

// collector reads the watched service and broker at each scrape.
type collector struct {
	m  *Metrics
	ns string
}

func (c *collector) desc(name, help string, labels ...string) *prometheus.Desc {
	return prometheus.NewDesc(prometheus.BuildFQName(c.ns, "", name), help, labels, nil)
}

// Describe sends nothing: the collector is unchecked, since which metrics
// it has depends on what is watched.
func (c *collector) Describe(chan<- *prometheus.Desc) {}

func (c *collector) Collect(ch chan<- prometheus.Metric) {
	c.m.mu.Lock()
	svc, broker := c.m.svc, c.m.broker
	c.m.mu.Unlock()
	gauge := func(name, help string, v int64) {
		ch <- prometheus.MustNewConstMetric(c.desc(name, help), prometheus.GaugeValue, float64(v))
	}
	counter := func(name, help string, v int64, labels ...string) {
		var names []string
		if len(labels) == 2 {
			names = []string{labels[0]}
			labels = labels[1:]
		}
		ch <- prometheus.MustNewConstMetric(c.desc(name, help, names...), prometheus.CounterValue, float64(v), labels...)
	}
	if svc != nil {
		connections := c.desc("connections", "Connections on this node now, detached reliable ones included, per hub.", "hub")
		for hub, n := range svc.HubConnections() {
			ch <- prometheus.MustNewConstMetric(connections, prometheus.GaugeValue, float64(n), hub)
		}
		st := svc.Stats()
		slow := "Clients closed as slow clients, per reason: their outbound buffer overflowed (outboundBuffer) or they held the most when the service's buffer budget ran out (bufferBudget)."
		counter("slow_client_disconnects_total", slow, st.SlowClientDisconnects, "reason", "outboundBuffer")
		counter("slow_client_disconnects_total", slow, st.BufferBudgetDisconnects, "reason", "bufferBudget")
		refused := "Client messages refused or cut short, per reason: over the rate limit (rateLimited), over the inbound budget (inboundBudget), not finished in time (messageTimeout)."
		counter("refused_messages_total", refused, st.RateLimited, "reason", "rateLimited")
		counter("refused_messages_total", refused, st.InboundBudgetDisconnects, "reason", "inboundBudget")
		counter("refused_messages_total", refused, st.MessageTimeouts, "reason", "messageTimeout")
		counter("panics_total", "Panics recovered on a connection's read or write path; each closed its connection.", st.Panics)
		gauge("buffered_bytes", "Bytes held by outbound queues and replay buffers now.", st.BufferedBytes)
		gauge("inbound_buffered_bytes", "Bytes of the client messages being received now.", st.InboundBytes)
		gauge("streams", "Group streams open on this node now.", st.Streams)
		gauge("hubs", "Hubs with connections on this node now.", st.Hubs)
		gauge("cluster_nodes", "Nodes of the cluster heard from lately, this one included.", st.Nodes)
		counter("cluster_timeouts_total", "Operations that failed because another node did not answer in time.", st.ClusterTimeouts)
		counter("broker_refused_total", "Commands the broker refused or could not flush.", st.BrokerErrors)
	}
	if broker != nil {
		b := broker()
		counter("broker_published_total", "Messages published to the broker.", b.Published)
		counter("broker_received_total", "Messages received from the broker.", b.Received)
		counter("broker_dropped_total", "Messages the broker dropped because this node did not keep up.", b.Dropped)
		counter("broker_errors_total", "Errors the broker reported.", b.Errors)
	}
}

// restOperation names a REST request's operation; ok is false for a path
// outside the REST API.
func restOperation(r *http.Request) (op string, ok bool) {
	if !strings.HasPrefix(r.URL.EscapedPath(), "/api/") {
		return "", false
	}
	op, _ = rest.Operation(r)
	return op, true
}
