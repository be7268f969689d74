package edge

import (
	"encoding/json"
	"strings"
	"testing"

	"github.com/flashgate/flashgate/lib/testenv"
)

// badOrderBodies are order bodies the edge refuses with 400: duplicate keys,
// huge, negative, zero, fractional or quoted numbers, wrong types, escapes
// and non-ASCII in ids, unknown fields, trailing garbage.
var badOrderBodies = []string{
	``, `[]`, `{}`, `{"sku":"x"}`, `{"qty":1}`, `{"sku":"x","qty":0}`, `{"sku":"x","qty":-1}`,
	`{"sku":"x","qty":1.5}`, `{"sku":"x","qty":1e3}`, `{"sku":"x","qty":01}`, `{"sku":"x","qty":"1"}`,
	`{"sku":"x","qty":1000001}`, `{"sku":"x","qty":99999999999999999999}`, `{"sku":"x","sku":"y","qty":1}`,
	`{"sku":"x","qty":1,"qty":2}`, `{"sku":"x","qty":1,"extra":true}`, `{"sku":"x","qty":1}garbage`,
	`{"sku":"x","qty":1}{}`, `{"sku":"\u0041","qty":1}`, `{"sku":"a b","qty":1}`, `{"sku":"","qty":1}`,
	`{"sku":"é","qty":1}`, `{"sku":1,"qty":1}`, `{"sku":"x" "qty":1}`, `{"sku":"x","qty":1,}`, `{"sku":"x","qty":1`,
	`{"sku":null,"qty":1}`, `{"s\u006bu":"x","qty":1}`,
}

func TestParseOrderBody(t *testing.T) {
	good := map[string]struct {
		sku string
		qty int64
	}{
		`{"sku":"SKU-1","qty":1}`:                   {"SKU-1", 1},
		" {\n \"qty\" : 3 , \"sku\" : \"a.b_c\" } ": {"a.b_c", 3},
		`{"sku":"x","qty":1000000}`:                 {"x", 1000000},
	}
	for in, want := range good {
		sku, qty, detail := parseOrderBody([]byte(in))
		if detail != "" || string(sku) != want.sku || qty != want.qty {
			t.Errorf("%s: got (%q, %d, %q)", in, sku, qty, detail)
		}
	}
	for _, in := range badOrderBodies {
		if sku, qty, detail := parseOrderBody([]byte(in)); detail == "" {
			t.Errorf("%s: accepted as (%q, %d)", in, sku, qty)
		}
	}
}

func FuzzParseOrderBody(f *testing.F) {
	f.Add([]byte(`{"sku":"SKU-1","qty":2}`))
	f.Add([]byte(`{"qty":2,"sku":"a"}`))
	f.Fuzz(func(t *testing.T, body []byte) {
		sku, qty, detail := parseOrderBody(body)
		if detail != "" {
			return
		}
		// Whatever we accept, a standard JSON decoder reads the same way.
		var v struct {
			SKU *string `json:"sku"`
			Qty *int64  `json:"qty"`
		}
		if err := json.Unmarshal(body, &v); err != nil || v.SKU == nil || v.Qty == nil || *v.SKU != string(sku) || *v.Qty != qty {
			t.Fatalf("accepted %q as (%q, %d), encoding/json says %v %+v", body, sku, qty, err, v)
		}
	})
}

// Every bad body is answered 400 invalid-request with a detail saying what
// is wrong, and takes nothing.
func TestBadOrderBodiesAre400(t *testing.T) {
	kf := testenv.Broker(t, 1)
	s := startTestEdge(t, kf, "x", 10)
	for _, in := range badOrderBodies {
		code, hdr, body := post(t, s.cfg.Addr, "u1", "", in)
		var p struct {
			Type, Detail string
			Status       int
		}
		if err := json.Unmarshal([]byte(body), &p); err != nil || code != 400 || p.Status != 400 ||
			!strings.HasSuffix(p.Type, "/invalid-request") || p.Detail == "" || hdr.Get("Content-Type") != "application/problem+json" {
			t.Errorf("%s: %d %s %q, want 400 application/problem+json invalid-request with a detail", in, code, hdr.Get("Content-Type"), body)
		}
	}
	if st, _ := s.SKU("x"); st.Remaining != 10 || st.Accepted != 0 {
		t.Fatalf("after the bad bodies: %+v, want nothing taken", st)
	}
}
