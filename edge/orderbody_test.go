package edge

import (
	"encoding/json"
	"testing"
)

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
	bad := []string{
		``, `[]`, `{}`, `{"sku":"x"}`, `{"qty":1}`, `{"sku":"x","qty":0}`, `{"sku":"x","qty":-1}`,
		`{"sku":"x","qty":1.5}`, `{"sku":"x","qty":1e3}`, `{"sku":"x","qty":01}`, `{"sku":"x","qty":"1"}`,
		`{"sku":"x","qty":1000001}`, `{"sku":"x","qty":99999999999999999999}`, `{"sku":"x","sku":"y","qty":1}`,
		`{"sku":"x","qty":1,"qty":2}`, `{"sku":"x","qty":1,"extra":true}`, `{"sku":"x","qty":1}garbage`,
		`{"sku":"x","qty":1}{}`, `{"sku":"\u0041","qty":1}`, `{"sku":"a b","qty":1}`, `{"sku":"","qty":1}`,
		`{"sku":"é","qty":1}`, `{"sku":1,"qty":1}`, `{"sku":"x" "qty":1}`, `{"sku":"x","qty":1,}`, `{"sku":"x","qty":1`,
		`{"sku":null,"qty":1}`, `{"s\u006bu":"x","qty":1}`,
	}
	for _, in := range bad {
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
