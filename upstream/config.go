// Package upstream is the CloudEvents HTTP implementation of the service's
// event handler seam (event-handler.md): it POSTs connect, connected,
// disconnected, user and group presence events to an existing Azure Web
// PubSub application server (the Node, .NET, Python, Java or Go event
// handler SDKs) configured per hub in the ARM shape, so that such a server
// keeps working unchanged.
// The in-process Go EventHandler stays the fast path.
package upstream

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/url"
	"os"
	"regexp"
	"strings"

	"github.com/embedwps/pubsub"
)

// Config is the per-hub configuration, the top level of cmd/webpubsub's
// -config file: {"hubs": {"<hub>": <settings>, "*": <every other hub>}}.
type Config struct {
	Hubs map[string]HubSettings `json:"hubs"`
}

// HubSettings are a hub's settings in the ARM shape (event-handler.md §2).
type HubSettings struct {
	EventHandlers []EventHandlerSettings `json:"eventHandlers"`
	// AnonymousConnectPolicy is "deny" (the default) or "allow".
	AnonymousConnectPolicy string `json:"anonymousConnectPolicy,omitempty"`
}

// EventHandlerSettings is one event handler of a hub. Handlers are matched
// in order; an event goes to the first that takes it.
type EventHandlerSettings struct {
	// URLTemplate is an absolute http(s) URL with optional {hub} and {event}
	// placeholders (not in the host).
	URLTemplate string `json:"urlTemplate"`
	// UserEventPattern is "*", a comma-separated list, or one event name;
	// empty takes no user event.
	UserEventPattern string `json:"userEventPattern,omitempty"`
	// SystemEvents lists which of connect, connected and disconnected go to
	// this handler.
	SystemEvents []string `json:"systemEvents,omitempty"`
	// GroupPresenceEvents selects the group presence events (preview) this
	// handler takes; nil takes none.
	GroupPresenceEvents *GroupPresenceEvents `json:"groupPresenceEvents,omitempty"`
	// Auth is accepted for compatibility; only {"type":"None"} is served.
	Auth *struct {
		Type string `json:"type"`
	} `json:"auth,omitempty"`
}

// GroupPresenceEvents are the group presence events of a handler, in the
// ARM shape: {"eventNames": ["joined", "left"], "groupFilters": [...]}.
type GroupPresenceEvents struct {
	// EventNames lists which of joined and left go to the handler; empty
	// takes none.
	EventNames []string `json:"eventNames"`
	// GroupFilters are group patterns as wildcard roles write them
	// (pubsub.GroupPattern): only events of a group one of them matches
	// go to the handler. Empty: every group.
	GroupFilters []string `json:"groupFilters,omitempty"`
}

// ErrInvalidConfig wraps every configuration error.
var ErrInvalidConfig = errors.New("upstream: invalid configuration")

// LoadConfig reads a configuration file.
func LoadConfig(path string) (Config, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return Config{}, err
	}
	var cfg Config
	dec := json.NewDecoder(strings.NewReader(string(b)))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&cfg); err != nil {
		return Config{}, fmt.Errorf("%w: %s: %v", ErrInvalidConfig, path, err)
	}
	return cfg, cfg.validate()
}

func (c Config) validate() error {
	for hub, s := range c.Hubs {
		switch strings.ToLower(s.AnonymousConnectPolicy) {
		case "", "deny", "allow":
		default:
			return fmt.Errorf("%w: hub %q: anonymousConnectPolicy must be allow or deny", ErrInvalidConfig, hub)
		}
		for i, h := range s.EventHandlers {
			if err := h.validate(); err != nil {
				return fmt.Errorf("%w: hub %q, event handler %d: %v", ErrInvalidConfig, hub, i, err)
			}
		}
	}
	return nil
}

func (h EventHandlerSettings) validate() error {
	u, err := url.Parse(strings.NewReplacer("{hub}", "hub", "{event}", "event").Replace(strings.ToLower(h.URLTemplate)))
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return fmt.Errorf("urlTemplate %q must be an absolute http or https URL", redactURL(h.URLTemplate))
	}
	if host := strings.ToLower(h.URLTemplate); strings.Contains(hostOf(host), "{") {
		return fmt.Errorf("urlTemplate %q: placeholders are not allowed in the host", redactURL(h.URLTemplate))
	}
	for _, e := range h.SystemEvents {
		switch strings.ToLower(e) {
		case "connect", "connected", "disconnected":
		default:
			return fmt.Errorf("unknown system event %q", e)
		}
	}
	if gp := h.GroupPresenceEvents; gp != nil {
		for _, e := range gp.EventNames {
			switch strings.ToLower(e) {
			case "joined", "left":
			default:
				return fmt.Errorf("unknown group presence event %q (joined or left)", e)
			}
		}
		for _, f := range gp.GroupFilters {
			if _, err := pubsub.CompileGroupPattern(f); err != nil {
				return fmt.Errorf("group filter %q: %v", f, err)
			}
		}
	}
	if h.Auth != nil && h.Auth.Type != "" && !strings.EqualFold(h.Auth.Type, "None") {
		return fmt.Errorf("auth type %q is not supported (only None)", h.Auth.Type)
	}
	return nil
}

// hostOf returns the authority of a URL template, before any path.
func hostOf(template string) string {
	rest := template
	if i := strings.Index(rest, "://"); i >= 0 {
		rest = rest[i+3:]
	}
	if i := strings.IndexAny(rest, "/?#"); i >= 0 {
		rest = rest[:i]
	}
	return rest
}

// settings returns the settings of hub: its own, else "*".
func (c Config) settings(hub string) (HubSettings, bool) {
	for name, s := range c.Hubs {
		if name != "*" && strings.EqualFold(name, hub) {
			return s, true
		}
	}
	s, ok := c.Hubs["*"]
	return s, ok
}

// takesSystem reports whether the handler takes system event name.
func (h EventHandlerSettings) takesSystem(name string) bool {
	for _, e := range h.SystemEvents {
		if strings.EqualFold(e, name) {
			return true
		}
	}
	return false
}

// takesUser reports whether the handler's userEventPattern matches name.
func (h EventHandlerSettings) takesUser(name string) bool {
	p := strings.TrimSpace(h.UserEventPattern)
	if p == "*" {
		return true
	}
	for _, e := range strings.Split(p, ",") {
		if e = strings.TrimSpace(e); e != "" && strings.EqualFold(e, name) {
			return true
		}
	}
	return false
}

// presenceFilter is a handler's compiled groupPresenceEvents.
type presenceFilter struct {
	joined, left bool
	groups       []pubsub.GroupPattern // empty: every group
}

func (h EventHandlerSettings) presenceFilter() presenceFilter {
	var f presenceFilter
	gp := h.GroupPresenceEvents
	if gp == nil {
		return f
	}
	for _, e := range gp.EventNames {
		f.joined = f.joined || strings.EqualFold(e, "joined")
		f.left = f.left || strings.EqualFold(e, "left")
	}
	for _, src := range gp.GroupFilters {
		if p, err := pubsub.CompileGroupPattern(src); err == nil { // validated
			f.groups = append(f.groups, p)
		}
	}
	return f
}

// takes reports whether the handler takes the presence event of group.
func (f presenceFilter) takes(joined bool, group string) bool {
	if joined && !f.joined || !joined && !f.left {
		return false
	}
	if len(f.groups) == 0 {
		return true
	}
	for _, p := range f.groups {
		if p.Match(group) {
			return true
		}
	}
	return false
}

var (
	hubPlaceholder   = regexp.MustCompile(`(?i)\{hub\}`)
	eventPlaceholder = regexp.MustCompile(`(?i)\{event\}`)
)

// resolve fills the URL template's placeholders (case-insensitive), escaped.
func resolve(template, hub, event string) string {
	t := hubPlaceholder.ReplaceAllLiteralString(template, url.PathEscape(hub))
	return eventPlaceholder.ReplaceAllLiteralString(t, url.PathEscape(event))
}
