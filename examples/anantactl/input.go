package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	"github.com/ananta-go/ananta/api"
)

// vipFile is what a VIP file holds: a configuration and, when the file is
// a VIP message (the output of "vip get -o json"), its version.
type vipFile struct {
	config     *api.VIPConfig
	version    uint64
	hasVersion bool
}

// readVIPFile reads a VIP file: YAML or JSON, a VIPConfig or a VIP.
func readVIPFile(name string, stdin io.Reader) (*vipFile, error) {
	var data []byte
	var err error
	if name == "-" {
		data, err = io.ReadAll(stdin)
	} else {
		data, err = os.ReadFile(name)
	}
	if err != nil {
		return nil, err
	}
	f, err := parseVIPFile(name, data)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	return f, nil
}

// parseVIPFile parses data, YAML or JSON by name's extension or else by
// its content.
func parseVIPFile(name string, data []byte) (*vipFile, error) {
	var tree any
	isJSON := false
	switch strings.ToLower(filepath.Ext(name)) {
	case ".json":
		isJSON = true
	case ".yaml", ".yml":
	default:
		isJSON = bytes.HasPrefix(bytes.TrimSpace(data), []byte("{"))
	}
	if isJSON {
		d := json.NewDecoder(bytes.NewReader(data))
		d.UseNumber()
		if err := d.Decode(&tree); err != nil {
			return nil, fmt.Errorf("invalid JSON: %w", err)
		}
		if d.More() {
			return nil, errors.New("invalid JSON: more than one value")
		}
	} else {
		if err := yaml.Unmarshal(data, &tree); err != nil {
			return nil, fmt.Errorf("invalid YAML: %w", err)
		}
	}
	tree, err := normalize(tree, "")
	if err != nil {
		return nil, err
	}
	top, ok := tree.(map[string]any)
	if !ok {
		return nil, errors.New("want a VIP configuration (a mapping with vip, tenant, endpoints, ...)")
	}
	out := &vipFile{}
	if _, wrapped := top["config"]; wrapped {
		// A VIP message: {config: ..., version: N, shard: S}.
		var v api.VIP
		if err := unmarshalProto(top, &v); err != nil {
			return nil, err
		}
		if v.Config == nil {
			return nil, errors.New("config: missing")
		}
		out.config, out.version = v.Config, v.Version
		_, out.hasVersion = top["version"]
		return out, nil
	}
	out.config = &api.VIPConfig{}
	if err := unmarshalProto(top, out.config); err != nil {
		return nil, err
	}
	return out, nil
}

// protoPos is the position part of protojson's errors, which refers to the
// re-encoded document, not to the user's file.
var protoPos = regexp.MustCompile(`\(line \d+:\d+\): `)

func unmarshalProto(tree any, m proto.Message) error {
	b, err := json.Marshal(tree)
	if err != nil {
		return err
	}
	if err := protojson.Unmarshal(b, m); err != nil {
		msg := protoPos.ReplaceAllString(err.Error(), "")
		msg = strings.TrimPrefix(strings.TrimPrefix(msg, "proto:"), " ")
		return errors.New(strings.ReplaceAll(msg, "\u00a0", " "))
	}
	return nil
}

// enumPrefix maps the keys of enum fields to their values' proto prefix,
// so that "tcp" may stand for PROTOCOL_TCP.
var enumPrefix = map[string]string{
	"protocol": "PROTOCOL_",
	"state":    "BACKEND_STATE_",
	"kind":     "PROBE_KIND_",
	"action":   "ACL_ACTION_",
}

// durationKeys are the keys of google.protobuf.Duration fields.
var durationKeys = map[string]bool{
	"idle_timeout": true, "idleTimeout": true, "interval": true, "timeout": true,
}

// normalize turns a decoded YAML or JSON tree into one encoding/json can
// write (string keys) and rewrites short enum names and Go durations into
// their protobuf JSON forms. key is the tree's key in its parent.
func normalize(v any, key string) (any, error) {
	switch v := v.(type) {
	case map[string]any:
		for k, e := range v {
			n, err := normalize(e, k)
			if err != nil {
				return nil, err
			}
			v[k] = n
		}
		return v, nil
	case map[any]any:
		m := make(map[string]any, len(v))
		for k, e := range v {
			ks := fmt.Sprint(k)
			n, err := normalize(e, ks)
			if err != nil {
				return nil, err
			}
			m[ks] = n
		}
		return m, nil
	case []any:
		for i, e := range v {
			n, err := normalize(e, key)
			if err != nil {
				return nil, err
			}
			v[i] = n
		}
		return v, nil
	case string:
		if p, ok := enumPrefix[key]; ok && v != "" {
			u := strings.ToUpper(strings.ReplaceAll(v, "-", "_"))
			if !strings.HasPrefix(u, p) {
				u = p + u
			}
			return u, nil
		}
		if durationKeys[key] {
			d, err := time.ParseDuration(v)
			if err != nil {
				return nil, fmt.Errorf("%s: invalid duration %q", key, v)
			}
			return strconv.FormatFloat(d.Seconds(), 'f', -1, 64) + "s", nil
		}
		return v, nil
	}
	return v, nil
}
