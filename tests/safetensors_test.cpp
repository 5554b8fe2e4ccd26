// Tests for src/io/safetensors: reader validation, writer atomicity, dtype conversions.
#include "io/safetensors.hpp"

#include <gtest/gtest.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <limits>
#include <nlohmann/json.hpp>
#include <random>
#include <string>
#include <vector>

#include "core/error.hpp"

namespace fs = std::filesystem;
using namespace infini::io;

namespace {

using Bytes = std::vector<uint8_t>;

// Expects f() to throw infini::Error with a one-line message containing every piece.
void expect_error(const std::function<void()>& f, const std::vector<std::string>& pieces) {
  try {
    f();
  } catch (const infini::Error& e) {
    const std::string m = e.what();
    EXPECT_EQ(m.find('\n'), std::string::npos) << "multi-line message: " << m;
    for (const auto& p : pieces)
      EXPECT_NE(m.find(p), std::string::npos) << "message: " << m << "\nlacks: " << p;
    return;
  } catch (const std::exception& e) {
    ADD_FAILURE() << "expected infini::Error, got another exception: " << e.what();
    return;
  }
  ADD_FAILURE() << "expected infini::Error, nothing was thrown";
}

// A file image: 8-byte little-endian header length, header, data.
Bytes image(const std::string& header, const Bytes& data = {}, uint64_t hlen_override = ~0ull) {
  uint64_t n = hlen_override == ~0ull ? header.size() : hlen_override;
  Bytes b(8 + header.size() + data.size());
  std::memcpy(b.data(), &n, 8);
  std::copy(header.begin(), header.end(), b.begin() + 8);
  std::copy(data.begin(), data.end(), b.begin() + 8 + std::ptrdiff_t(header.size()));
  return b;
}

Bytes float_bytes(const std::vector<float>& v) {
  Bytes b(v.size() * 4);
  if (!v.empty()) std::memcpy(b.data(), v.data(), b.size());
  return b;
}

Bytes u16_bytes(const std::vector<uint16_t>& v) {
  Bytes b(v.size() * 2);
  if (!v.empty()) std::memcpy(b.data(), v.data(), b.size());
  return b;
}

Bytes read_all(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return Bytes(std::istreambuf_iterator<char>(in), {});
}

uint32_t bits(float f) { return std::bit_cast<uint32_t>(f); }

class SafetensorsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string tmpl = (fs::path(::testing::TempDir()) / "safetensors_XXXXXX").string();
    ASSERT_NE(::mkdtemp(tmpl.data()), nullptr);
    dir_ = tmpl;
  }
  void TearDown() override {
    std::error_code ec;
    fs::permissions(dir_, fs::perms::owner_all, fs::perm_options::add, ec);
    fs::remove_all(dir_, ec);
  }
  std::string path(const std::string& name) const { return (fs::path(dir_) / name).string(); }
  std::string put(const std::string& name, const Bytes& b) const {
    std::string p = path(name);
    std::ofstream out(p, std::ios::binary);
    out.write(reinterpret_cast<const char*>(b.data()), static_cast<std::streamsize>(b.size()));
    EXPECT_TRUE(out.good());
    return p;
  }
  void put_text(const std::string& name, const std::string& text) const {
    put(name, Bytes(text.begin(), text.end()));
  }
  // Every entry in dir_ (to catch leftover temp files).
  std::vector<std::string> listing(const std::string& sub = "") const {
    std::vector<std::string> out;
    for (const auto& e : fs::directory_iterator(fs::path(dir_) / sub))
      out.push_back(e.path().filename().string());
    std::sort(out.begin(), out.end());
    return out;
  }
  std::string dir_;
};

// ---------------------------------------------------------------------------------------
// Basics

TEST(DType, NamesAndSizes) {
  EXPECT_STREQ(dtype_name(DType::F32), "F32");
  EXPECT_STREQ(dtype_name(DType::F16), "F16");
  EXPECT_STREQ(dtype_name(DType::BF16), "BF16");
  EXPECT_EQ(dtype_size(DType::F32), 4u);
  EXPECT_EQ(dtype_size(DType::F16), 2u);
  EXPECT_EQ(dtype_size(DType::BF16), 2u);
}

TEST(TensorInfoTest, Numel) {
  TensorInfo t;
  EXPECT_EQ(t.numel(), 1);  // a scalar
  t.shape = {2, 3, 4};
  EXPECT_EQ(t.numel(), 24);
  t.shape = {5, 0, 7};
  EXPECT_EQ(t.numel(), 0);
}

// ---------------------------------------------------------------------------------------
// Conversions

TEST(Convert, KnownF16Values) {
  EXPECT_EQ(f32_to_f16(1.0f), 0x3c00);
  EXPECT_EQ(f32_to_f16(-2.5f), 0xc100);
  EXPECT_EQ(f32_to_f16(65504.0f), 0x7bff);
  EXPECT_EQ(f32_to_f16(0.0f), 0x0000);
  EXPECT_EQ(f32_to_f16(-0.0f), 0x8000);
  EXPECT_EQ(f32_to_f16(std::ldexp(1.0f, -24)), 0x0001);     // smallest subnormal
  EXPECT_EQ(f32_to_f16(std::ldexp(1023.0f, -24)), 0x03ff);  // largest subnormal
  EXPECT_EQ(f32_to_f16(std::ldexp(1.0f, -14)), 0x0400);     // smallest normal
  EXPECT_EQ(f32_to_f16(INFINITY), 0x7c00);
  EXPECT_EQ(f32_to_f16(-INFINITY), 0xfc00);
  EXPECT_EQ(f32_to_f16(1e6f), 0x7c00);  // overflow
  EXPECT_EQ(f32_to_f16(-1e6f), 0xfc00);

  EXPECT_EQ(f16_to_f32(0x3c00), 1.0f);
  EXPECT_EQ(f16_to_f32(0xc100), -2.5f);
  EXPECT_EQ(f16_to_f32(0x7bff), 65504.0f);
  EXPECT_EQ(f16_to_f32(0x0001), std::ldexp(1.0f, -24));
  EXPECT_EQ(f16_to_f32(0x83ff), -std::ldexp(1023.0f, -24));
  EXPECT_EQ(bits(f16_to_f32(0x8000)), 0x80000000u);  // -0 keeps its sign
  EXPECT_EQ(f16_to_f32(0x7c00), INFINITY);
  EXPECT_EQ(f16_to_f32(0xfc00), -INFINITY);
  EXPECT_TRUE(std::isnan(f16_to_f32(0x7e00)));
  EXPECT_TRUE(std::isnan(f16_to_f32(0x7c01)));  // signalling NaN is still NaN
}

TEST(Convert, F16RoundsToNearestEven) {
  const float ulp = std::ldexp(1.0f, -10);            // f16 ulp at 1.0
  EXPECT_EQ(f32_to_f16(1.0f + ulp / 2), 0x3c00);      // tie: down to even
  EXPECT_EQ(f32_to_f16(1.0f + 3 * ulp / 2), 0x3c02);  // tie: up to even
  EXPECT_EQ(f32_to_f16(std::nextafter(1.0f + ulp / 2, 2.0f)), 0x3c01);
  EXPECT_EQ(f32_to_f16(65519.0f), 0x7bff);
  EXPECT_EQ(f32_to_f16(65520.0f), 0x7c00);               // tie at the top rounds to inf
  EXPECT_EQ(f32_to_f16(std::ldexp(1.0f, -25)), 0x0000);  // half the smallest subnormal: to 0
  EXPECT_EQ(f32_to_f16(std::nextafter(std::ldexp(1.0f, -25), 1.0f)), 0x0001);
  EXPECT_EQ(f32_to_f16(std::ldexp(3.0f, -25)), 0x0002);  // 1.5 units: to even 2
  EXPECT_EQ(f32_to_f16(std::ldexp(5.0f, -25)), 0x0002);  // 2.5 units: to even 2
  // Largest subnormal + half a unit rounds up into the smallest normal.
  EXPECT_EQ(f32_to_f16(std::ldexp(2047.0f, -25)), 0x0400);
  EXPECT_EQ(f32_to_f16(1e-30f), 0x0000);
  EXPECT_EQ(f32_to_f16(-1e-30f), 0x8000);
}

TEST(Convert, KnownBF16Values) {
  EXPECT_EQ(f32_to_bf16(1.0f), 0x3f80);
  EXPECT_EQ(f32_to_bf16(-2.5f), 0xc020);
  EXPECT_EQ(f32_to_bf16(65504.0f), 0x4780);  // 8 significant bits: rounds up to 65536
  EXPECT_EQ(f32_to_bf16(INFINITY), 0x7f80);
  EXPECT_EQ(f32_to_bf16(-INFINITY), 0xff80);
  EXPECT_EQ(f32_to_bf16(std::numeric_limits<float>::max()), 0x7f80);  // rounds to inf
  EXPECT_EQ(f32_to_bf16(std::ldexp(1.0f, -133)), 0x0001);             // f32 subnormal
  const float ulp = std::ldexp(1.0f, -7);
  EXPECT_EQ(f32_to_bf16(1.0f + ulp / 2), 0x3f80);      // tie: down to even
  EXPECT_EQ(f32_to_bf16(1.0f + 3 * ulp / 2), 0x3f82);  // tie: up to even

  EXPECT_EQ(bf16_to_f32(0x3f80), 1.0f);
  EXPECT_EQ(bf16_to_f32(0xc020), -2.5f);
  EXPECT_EQ(bf16_to_f32(0x0001), std::ldexp(1.0f, -133));
  EXPECT_EQ(bf16_to_f32(0x7f80), INFINITY);
  EXPECT_EQ(bf16_to_f32(0xff80), -INFINITY);
  EXPECT_TRUE(std::isnan(bf16_to_f32(0x7fc0)));
  EXPECT_TRUE(std::isnan(bf16_to_f32(0xff81)));
}

TEST(Convert, NaNStaysNaN) {
  // Payload only in the low mantissa bits: plain truncation would produce inf.
  for (uint32_t b : {0x7f800001u, 0xff800001u, 0x7fc00000u, 0x7fffffffu, 0x7f801000u}) {
    const float f = std::bit_cast<float>(b);
    const uint16_t h = f32_to_f16(f), g = f32_to_bf16(f);
    EXPECT_EQ(h & 0x7c00, 0x7c00) << std::hex << b;
    EXPECT_NE(h & 0x03ff, 0) << std::hex << b;
    EXPECT_EQ(h >> 15, b >> 31) << std::hex << b;
    EXPECT_EQ(g & 0x7f80, 0x7f80) << std::hex << b;
    EXPECT_NE(g & 0x007f, 0) << std::hex << b;
    EXPECT_EQ(g >> 15, b >> 31) << std::hex << b;
  }
}

// Reference decoders written from the format definition, in double.
double ref_f16(uint16_t v) {
  const int s = v >> 15, e = (v >> 10) & 31, m = v & 1023;
  double x = e == 0 ? std::ldexp(m, -24) : std::ldexp(1024 + m, e - 25);
  return s ? -x : x;
}
double ref_bf16(uint16_t v) {
  const int s = v >> 15, e = (v >> 7) & 255, m = v & 127;
  double x = e == 0 ? std::ldexp(m, -133) : std::ldexp(128 + m, e - 134);
  return s ? -x : x;
}

TEST(Convert, ExhaustiveDecodeAndRoundTrip) {
  for (uint32_t u = 0; u < 65536; ++u) {
    const uint16_t v = static_cast<uint16_t>(u);
    const float h = f16_to_f32(v), b = bf16_to_f32(v);
    if (((v >> 10) & 31) == 31) {  // f16 inf / NaN
      EXPECT_EQ(std::isnan(h), (v & 1023) != 0) << std::hex << u;
      if (v & 1023)
        EXPECT_TRUE(std::isnan(f16_to_f32(f32_to_f16(h))));
      else
        EXPECT_EQ(f32_to_f16(h), v);
    } else {
      ASSERT_EQ(static_cast<double>(h), ref_f16(v)) << std::hex << u;
      ASSERT_EQ(f32_to_f16(h), v) << std::hex << u;
    }
    if (((v >> 7) & 255) == 255) {  // bf16 inf / NaN
      EXPECT_EQ(std::isnan(b), (v & 127) != 0) << std::hex << u;
      if (v & 127)
        EXPECT_TRUE(std::isnan(bf16_to_f32(f32_to_bf16(b))));
      else
        EXPECT_EQ(f32_to_bf16(b), v);
    } else {
      ASSERT_EQ(static_cast<double>(b), ref_bf16(v)) << std::hex << u;
      ASSERT_EQ(f32_to_bf16(b), v) << std::hex << u;
    }
  }
}

// Reference round-to-nearest-even by search over every non-negative code up to inf,
// treating inf as the next value past the largest finite one (IEEE overflow rule).
uint16_t ref_round(float f, uint16_t inf_code, double (*decode)(uint16_t), double inf_value) {
  const double x = std::fabs(static_cast<double>(f));
  const uint16_t sign = std::signbit(f) ? 0x8000 : 0;
  if (x >= inf_value) return sign | inf_code;
  uint16_t lo = 0, hi = inf_code;  // value(lo) <= x < value(hi)
  while (hi - lo > 1) {
    uint16_t mid = static_cast<uint16_t>((lo + hi) / 2);
    (decode(mid) <= x ? lo : hi) = mid;
  }
  const double vlo = decode(lo), vhi = hi == inf_code ? inf_value : decode(hi);
  if (x - vlo < vhi - x) return sign | lo;
  if (x - vlo > vhi - x) return sign | hi;
  return sign | ((lo & 1) ? hi : lo);
}

TEST(Convert, RoundingMatchesReference) {
  std::vector<float> inputs;
  // Every midpoint between adjacent codes (exact in f32), and its float neighbours.
  for (uint32_t c = 0; c < 0x7c00; ++c) {
    const float m =
        static_cast<float>((ref_f16(c) + (c + 1 == 0x7c00 ? 65536.0 : ref_f16(c + 1))) / 2);
    inputs.insert(inputs.end(), {m, std::nextafter(m, 0.0f), std::nextafter(m, INFINITY)});
  }
  for (uint32_t c = 0; c < 0x7f80; ++c) {
    const double hi = c + 1 == 0x7f80 ? std::ldexp(1.0, 128) : ref_bf16(c + 1);
    const float m = static_cast<float>((ref_bf16(c) + hi) / 2);
    if (std::isinf(m)) continue;
    inputs.insert(inputs.end(), {m, std::nextafter(m, 0.0f), std::nextafter(m, INFINITY)});
  }
  std::mt19937 rng(1234);
  for (int i = 0; i < 200000; ++i) {
    float f = std::bit_cast<float>(static_cast<uint32_t>(rng()));
    if (!std::isnan(f)) inputs.push_back(f);
  }
  size_t bad16 = 0, badb = 0;
  for (float f : inputs) {
    for (float g : {f, -f}) {
      if (f32_to_f16(g) != ref_round(g, 0x7c00, ref_f16, 65536.0) && bad16++ < 5)
        ADD_FAILURE() << "f16 of " << std::hexfloat << g;
      if (f32_to_bf16(g) != ref_round(g, 0x7f80, ref_bf16, std::ldexp(1.0, 128)) && badb++ < 5)
        ADD_FAILURE() << "bf16 of " << std::hexfloat << g;
#if defined(__FLT16_MAX__)
      // The compiler's own conversion is an independent second reference.
      EXPECT_EQ(f32_to_f16(g), std::bit_cast<uint16_t>(static_cast<_Float16>(g)));
#endif
    }
  }
  EXPECT_EQ(bad16, 0u);
  EXPECT_EQ(badb, 0u);
}

// ---------------------------------------------------------------------------------------
// Writing and reading back

TEST_F(SafetensorsTest, F32RoundTripAndLayout) {
  const std::vector<float> a = {1.5f,  -0.0f,   std::bit_cast<float>(0x7fc01234u),
                                3e38f, -1e-40f, INFINITY};
  const std::vector<float> b = {42.0f};
  const std::vector<float> c = {};
  const std::vector<float> d = {1, 2, 3, 4, 5, 6, 7, 8};
  const std::string p = path("rt.safetensors");
  // Deliberately not in name order: the header must keep this order.
  write_safetensors(p,
                    {{"zeta", {2, 3}, a.data()},
                     {"alpha", {}, b.data()},
                     {"empty", {0, 4}, c.data()},
                     {"mid", {2, 2, 2}, d.data()}},
                    {{"format", "pt"}, {"note", "x\"y"}});

  const Bytes raw = read_all(p);
  uint64_t hlen;
  std::memcpy(&hlen, raw.data(), 8);
  EXPECT_EQ((8 + hlen) % 8, 0u);  // data section is 8-byte aligned
  const std::string header(raw.begin() + 8, raw.begin() + 8 + static_cast<long>(hlen));
  const auto j = nlohmann::json::parse(header);  // trailing padding must be spaces
  EXPECT_NE(header.find('}'), std::string::npos);
  for (size_t i = header.rfind('}') + 1; i < header.size(); ++i) EXPECT_EQ(header[i], ' ');
  EXPECT_LT(header.find("\"zeta\""), header.find("\"alpha\""));
  EXPECT_LT(header.find("\"alpha\""), header.find("\"empty\""));
  EXPECT_LT(header.find("\"empty\""), header.find("\"mid\""));
  EXPECT_EQ(j["zeta"]["data_offsets"], nlohmann::json({0, 24}));
  EXPECT_EQ(j["alpha"]["data_offsets"], nlohmann::json({24, 28}));
  EXPECT_EQ(j["empty"]["data_offsets"], nlohmann::json({28, 28}));
  EXPECT_EQ(j["mid"]["data_offsets"], nlohmann::json({28, 60}));
  EXPECT_EQ(j["alpha"]["shape"], nlohmann::json::array());
  EXPECT_EQ(j["zeta"]["dtype"], "F32");
  EXPECT_EQ(raw.size(), 8 + hlen + 60);

  auto f = SafetensorsFile::open(p);
  EXPECT_EQ(f->path(), p);
  ASSERT_EQ(f->tensors().size(), 4u);
  EXPECT_EQ(f->metadata().at("format"), "pt");
  EXPECT_EQ(f->metadata().at("note"), "x\"y");
  // tensors() is in file order.
  EXPECT_EQ(f->tensors()[0].name, "zeta");
  EXPECT_EQ(f->tensors()[3].name, "mid");
  const TensorInfo* z = f->find("zeta");
  ASSERT_NE(z, nullptr);
  EXPECT_EQ(z->shape, (std::vector<int64_t>{2, 3}));
  EXPECT_EQ(z->dtype, DType::F32);
  EXPECT_EQ(z->nbytes, 24u);
  EXPECT_EQ(std::memcmp(z->data, a.data(), 24), 0);  // bit-exact, NaN payload and -0 too
  EXPECT_EQ(f->find("empty")->numel(), 0);
  EXPECT_EQ(f->find("alpha")->numel(), 1);
  EXPECT_EQ(f->find("nope"), nullptr);
  EXPECT_EQ(listing(), std::vector<std::string>{"rt.safetensors"});  // no temp file left
}

TEST_F(SafetensorsTest, EmptyTensorListAndOverwrite) {
  const std::string p = path("e.safetensors");
  write_safetensors(p, {});
  auto f = SafetensorsFile::open(p);
  EXPECT_TRUE(f->tensors().empty());
  EXPECT_TRUE(f->metadata().empty());
  const std::vector<float> v = {7, 8};
  write_safetensors(p, {{"w", {2}, v.data()}});  // replaces the old file
  auto g = SafetensorsFile::open(p);
  ASSERT_EQ(g->tensors().size(), 1u);
  EXPECT_EQ(std::memcmp(g->find("w")->data, v.data(), 8), 0);
  EXPECT_EQ(listing(), std::vector<std::string>{"e.safetensors"});
}

TEST_F(SafetensorsTest, HalfPrecisionFilesReadAsF32) {
  const std::vector<float> vals = {1.0f,     -2.5f,     65504.0f, std::ldexp(1.0f, -24),
                                   INFINITY, -INFINITY, 0.0f,     0.333251953125f};
  std::vector<uint16_t> h, b;
  for (float v : vals) h.push_back(f32_to_f16(v)), b.push_back(f32_to_bf16(v));
  h.push_back(0x7e00), b.push_back(0x7fc0);  // NaN
  fs::create_directory(path("m"));
  write_safetensors_raw(path("m/model.safetensors"), {{"h", DType::F16, {3, 3}, u16_bytes(h)},
                                                      {"b", DType::BF16, {9}, u16_bytes(b)}});
  auto f = SafetensorsFile::open(path("m/model.safetensors"));
  EXPECT_EQ(f->find("h")->dtype, DType::F16);
  EXPECT_EQ(f->find("b")->dtype, DType::BF16);
  EXPECT_EQ(std::memcmp(f->find("h")->data, h.data(), 18), 0);

  auto ws = WeightStore::open_dir(path("m"));
  float out[9];
  ws.read_f32("h", {3, 3}, out);
  for (size_t i = 0; i < vals.size(); ++i) EXPECT_EQ(out[i], vals[i]) << i;  // exact in f16
  EXPECT_TRUE(std::isnan(out[8]));
  ws.read_f32("b", {9}, out);
  for (size_t i = 0; i < vals.size(); ++i) EXPECT_EQ(out[i], bf16_to_f32(f32_to_bf16(vals[i])));
  EXPECT_EQ(out[0], 1.0f);
  EXPECT_EQ(out[1], -2.5f);
  EXPECT_EQ(out[2], 65536.0f);
  EXPECT_TRUE(std::isnan(out[8]));
}

TEST_F(SafetensorsTest, UnalignedDataIsRead) {
  // Pad the header so the tensor (at data offset 1) starts 2 bytes past a 4-byte boundary
  // of the page-aligned mapping.
  std::string header = R"({"a":{"dtype":"F32","shape":[3],"data_offsets":[1,13]}})";
  while ((8 + header.size() + 1) % 4 != 2) header += ' ';
  Bytes data = float_bytes({0, 1.25f, -3.5f, 1e10f});
  data.erase(data.begin(), data.begin() + 3);  // start the tensor at data offset 1
  fs::create_directory(path("u"));
  put("u/model.safetensors", image(header, data));
  auto ws = WeightStore::open_dir(path("u"));
  float out[3];
  ws.read_f32("a", {3}, out);
  EXPECT_EQ(out[0], 1.25f);
  EXPECT_EQ(out[1], -3.5f);
  EXPECT_EQ(out[2], 1e10f);
}

// ---------------------------------------------------------------------------------------
// Reader validation

TEST_F(SafetensorsTest, ValidEdgeCases) {
  struct Case {
    const char* label;
    std::string header;
    Bytes data;
    size_t n;
  };
  const std::vector<Case> cases = {
      {"empty object", "{}", {}, 0},
      {"padded empty object", "{}       ", {}, 0},
      {"metadata only", R"({"__metadata__":{"a":"b"}})", {}, 0},
      {"scalar", R"({"s":{"dtype":"F32","shape":[],"data_offsets":[0,4]}})", Bytes(4), 1},
      {"zero-size tensor inside another's range, gap, extra field",
       R"({"a":{"dtype":"BF16","shape":[4],"data_offsets":[0,8],"extra":1},)"
       R"("z":{"dtype":"F16","shape":[0,5],"data_offsets":[4,4]},)"
       R"("c":{"dtype":"F32","shape":[1],"data_offsets":[12,16]}})",
       Bytes(16), 3},
  };
  for (const auto& c : cases) {
    SCOPED_TRACE(c.label);
    const std::string p = put("ok.safetensors", image(c.header, c.data));
    std::shared_ptr<SafetensorsFile> f;
    ASSERT_NO_THROW(f = SafetensorsFile::open(p));
    EXPECT_EQ(f->tensors().size(), c.n);
  }
  // Tensors come back in file order, not name order.
  const std::string p =
      put("order.safetensors", image(R"({"b":{"dtype":"F32","shape":[1],"data_offsets":[4,8]},)"
                                     R"("a":{"dtype":"F32","shape":[1],"data_offsets":[8,12]},)"
                                     R"("c":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}})",
                                     Bytes(12)));
  auto f = SafetensorsFile::open(p);
  ASSERT_EQ(f->tensors().size(), 3u);
  EXPECT_EQ(f->tensors()[0].name, "c");
  EXPECT_EQ(f->tensors()[1].name, "b");
  EXPECT_EQ(f->tensors()[2].name, "a");
  EXPECT_EQ(f->find("a")->data, f->find("c")->data + 8);
}

TEST_F(SafetensorsTest, TruncatedOrOversizedHeaderLength) {
  expect_error([&] { SafetensorsFile::open(put("zero.safetensors", {})); },
               {"zero.safetensors", "shorter than 8"});
  expect_error([&] { SafetensorsFile::open(put("seven.safetensors", Bytes(7, 0))); },
               {"seven.safetensors", "shorter than 8"});
  expect_error([&] { SafetensorsFile::open(put("long.safetensors", image("{}  ", {}, 100))); },
               {"long.safetensors", "larger than the file"});
  expect_error([&] { SafetensorsFile::open(put("one.safetensors", image("{}", {}, 3))); },
               {"one.safetensors", "larger than the file"});
  expect_error([&] { SafetensorsFile::open(put("huge.safetensors", image("{}", {}, ~0ull - 1))); },
               {"huge.safetensors", "100 MB"});
  expect_error([&] { SafetensorsFile::open(put("nohdr.safetensors", image(""))); },
               {"nohdr.safetensors", "not valid JSON"});
  // A (sparse) file big enough to hold a 101 MB header: only the size limit can reject it
  // before parsing.
  const std::string big = put("big.safetensors", image("", {}, 101ull << 20));
  fs::resize_file(big, 8 + (101ull << 20));
  expect_error([&] { SafetensorsFile::open(big); }, {"big.safetensors", "100 MB"});
  expect_error([&] { SafetensorsFile::open(path("missing.safetensors")); },
               {"missing.safetensors", "cannot open"});
  expect_error([&] { SafetensorsFile::open(dir_); }, {dir_, "not a regular file"});
}

TEST_F(SafetensorsTest, MalformedHeadersThrow) {
  struct Case {
    const char* label;
    std::string header;
    size_t data_bytes;
    std::vector<std::string> expect;  // pieces of the message besides the file name
  };
  const std::string ok_entry = R"({"dtype":"F32","shape":[2],"data_offsets":[0,8]})";
  auto one = [](const std::string& dtype, const std::string& shape, const std::string& off) {
    return R"({"a":{"dtype":)" + dtype + R"(,"shape":)" + shape + R"(,"data_offsets":)" + off +
           "}}";
  };
  const std::vector<Case> cases = {
      {"control: valid", R"({"a":)" + ok_entry + "}", 8, {}},
      {"truncated JSON", R"({"a":)", 8, {"not valid JSON"}},
      {"trailing garbage", R"({"a":)" + ok_entry + "}x", 8, {"not valid JSON"}},
      {"NUL after header", std::string("{}\0", 3), 0, {"not valid JSON"}},
      {"NUL inside header", std::string("{\0}", 3), 0, {"not valid JSON"}},
      {"invalid UTF-8", "{\"\xff\":" + ok_entry + "}", 8, {"not valid JSON"}},
      {"array header", "[1,2]", 0, {"not a JSON object"}},
      {"string header", R"("str")", 0, {"not a JSON object"}},
      {"entry not object", R"({"a":5})", 0, {"'a'", "not a JSON object"}},
      {"no dtype", R"({"a":{"shape":[2],"data_offsets":[0,8]}})", 8, {"'a'", "no dtype"}},
      {"no shape", R"({"a":{"dtype":"F32","data_offsets":[0,8]}})", 8, {"'a'", "no shape"}},
      {"no offsets", R"({"a":{"dtype":"F32","shape":[2]}})", 8, {"'a'", "no data_offsets"}},
      {"dtype number", one("5", "[2]", "[0,8]"), 8, {"'a'", "dtype is not a string"}},
      {"unknown dtype", one(R"("F33")", "[2]", "[0,8]"), 8, {"'a'", "unknown dtype 'F33'"}},
      {"I64", one(R"("I64")", "[1]", "[0,8]"), 8, {"'a'", "unsupported dtype 'I64'"}},
      {"U8", one(R"("U8")", "[8]", "[0,8]"), 8, {"'a'", "unsupported dtype 'U8'"}},
      {"F64", one(R"("F64")", "[1]", "[0,8]"), 8, {"'a'", "unsupported dtype 'F64'"}},
      {"shape not array", one(R"("F32")", R"("2")", "[0,8]"), 8, {"'a'", "shape is not an array"}},
      {"negative dim", one(R"("F32")", "[-2]", "[0,8]"), 8, {"'a'", "non-negative integer"}},
      {"float dim", one(R"("F32")", "[2.0]", "[0,8]"), 8, {"'a'", "non-negative integer"}},
      {"fraction dim", one(R"("F32")", "[2.5]", "[0,8]"), 8, {"'a'", "non-negative integer"}},
      {"string dim", one(R"("F32")", R"(["2"])", "[0,8]"), 8, {"'a'", "non-negative integer"}},
      {"dim > int64",
       one(R"("F32")", "[18446744073709551615]", "[0,8]"),
       8,
       {"'a'", "non-negative integer"}},
      {"shape product overflow",
       one(R"("F32")", "[4294967296,4294967296,4294967296]", "[0,8]"),
       8,
       {"'a'", "shape overflows"}},
      {"shape product > int64",
       one(R"("F32")", "[4294967296,4294967296]", "[0,8]"),
       8,
       {"'a'", "shape overflows"}},
      {"byte size overflow",
       one(R"("F32")", "[4611686018427387904]", "[0,8]"),
       8,
       {"'a'", "more than 2^64"}},
      {"offsets not array",
       one(R"("F32")", "[2]", R"("0,8")"),
       8,
       {"'a'", "data_offsets is not two non-negative integers"}},
      {"one offset", one(R"("F32")", "[2]", "[0]"), 8, {"'a'", "data_offsets is not two"}},
      {"three offsets", one(R"("F32")", "[2]", "[0,8,8]"), 8, {"'a'", "data_offsets is not two"}},
      {"negative offset", one(R"("F32")", "[0]", "[-1,-1]"), 8, {"'a'", "data_offsets is not two"}},
      {"float offset", one(R"("F32")", "[2]", "[0,8.0]"), 8, {"'a'", "data_offsets is not two"}},
      {"begin > end", one(R"("F32")", "[2]", "[8,0]"), 8, {"'a'", "begin is after end"}},
      {"end beyond data", one(R"("F32")", "[4]", "[0,16]"), 8, {"'a'", "beyond the data"}},
      {"huge end",
       one(R"("F32")", "[2]", "[18446744073709551608,18446744073709551615]"),
       8,
       {"'a'", "beyond the data"}},
      {"size mismatch",
       one(R"("F32")", "[3]", "[0,8]"),
       8,
       {"'a'", "has 8 bytes, but shape [3] F32 needs 12"}},
      {"half size mismatch", one(R"("BF16")", "[2]", "[0,8]"), 8, {"'a'", "needs 4"}},
      {"overlap",
       R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
       R"("b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})",
       12,
       {"'a'", "'b'", "overlap"}},
      {"identical ranges",
       R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
       R"("b":{"dtype":"F16","shape":[4],"data_offsets":[0,8]}})",
       8,
       {"overlap"}},
      {"duplicate tensor",
       R"({"a":)" + ok_entry + R"(,"a":)" + ok_entry + "}",
       8,
       {"duplicate key 'a'"}},
      {"duplicate field",
       R"({"a":{"dtype":"F32","dtype":"F32","shape":[2],"data_offsets":[0,8]}})",
       8,
       {"duplicate key 'dtype'"}},
      {"metadata string", R"({"__metadata__":"x"})", 0, {"__metadata__ is not a JSON object"}},
      {"metadata array", R"({"__metadata__":[]})", 0, {"__metadata__ is not a JSON object"}},
      {"metadata number value", R"({"__metadata__":{"k":1}})", 0, {"'k' is not a string"}},
      {"metadata null value", R"({"__metadata__":{"k":null}})", 0, {"'k' is not a string"}},
      {"deep nesting",
       R"({"a":)" + std::string(100000, '[') + std::string(100000, ']') + "}",
       0,
       {"nests too deeply"}},
      {"control character in name",
       "{\"x\\ny\":" + std::string(R"({"dtype":"I8","shape":[1],"data_offsets":[0,1]})") + "}",
       1,
       {"'x\\x0ay'", "unsupported dtype"}},
  };
  for (const auto& c : cases) {
    SCOPED_TRACE(c.label);
    const std::string p = put("bad.safetensors", image(c.header, Bytes(c.data_bytes, 0)));
    if (c.expect.empty()) {
      EXPECT_NO_THROW(SafetensorsFile::open(p));
      continue;
    }
    std::vector<std::string> pieces = c.expect;
    pieces.push_back(p);
    expect_error([&] { SafetensorsFile::open(p); }, pieces);
    // The in-memory parser (the fuzz entry point) agrees, naming what it was told.
    const Bytes img = image(c.header, Bytes(c.data_bytes, 0));
    pieces.back() = "buf";
    expect_error([&] { parse_safetensors(img.data(), img.size(), "buf", nullptr); }, pieces);
  }
}

// A valid image with several tensors and metadata, for the robustness tests below.
Bytes sample_image() {
  const std::string h = R"({"__metadata__":{"format":"pt"},)"
                        R"("w":{"dtype":"F32","shape":[2,2],"data_offsets":[0,16]},)"
                        R"("b":{"dtype":"BF16","shape":[3],"data_offsets":[16,22]},)"
                        R"("h":{"dtype":"F16","shape":[1,1],"data_offsets":[22,24]}})";
  Bytes data(24);
  for (size_t i = 0; i < data.size(); ++i) data[i] = static_cast<uint8_t>(i * 37);
  return image(h, data);
}

TEST(ParseSafetensors, SampleIsValid) {
  const Bytes img = sample_image();
  std::map<std::string, std::string> meta;
  auto ts = parse_safetensors(img.data(), img.size(), "sample", &meta);
  ASSERT_EQ(ts.size(), 3u);
  EXPECT_EQ(meta.at("format"), "pt");
  EXPECT_EQ(ts[0].name, "w");
  EXPECT_EQ(ts[2].data + ts[2].nbytes, img.data() + img.size());
}

TEST(ParseSafetensors, EveryTruncationThrows) {
  const Bytes img = sample_image();
  for (size_t n = 0; n < img.size(); ++n) {
    // An exactly-sized heap copy, so a sanitizer build sees any read past the end.
    std::vector<uint8_t> buf(img.begin(), img.begin() + static_cast<long>(n));
    SCOPED_TRACE(n);
    expect_error([&] { parse_safetensors(buf.data(), buf.size(), "trunc", nullptr); }, {"trunc"});
  }
}

TEST(ParseSafetensors, RandomMutationsOnlyThrowError) {
  const Bytes img = sample_image();
  std::mt19937 rng(42);
  int accepted = 0, rejected = 0;
  for (int iter = 0; iter < 5000; ++iter) {
    Bytes m = img;
    const int edits = 1 + static_cast<int>(rng() % 4);
    for (int e = 0; e < edits; ++e) {
      const size_t pos = rng() % m.size();
      switch (rng() % 4) {
        case 0:
          m[pos] = static_cast<uint8_t>(rng());
          break;
        case 1:
          m[pos] ^= static_cast<uint8_t>(1u << (rng() % 8));
          break;
        case 2:
          m.erase(m.begin() + static_cast<long>(pos));
          break;
        default:
          m.insert(m.begin() + static_cast<long>(pos), "{}[]\",:0-9e"[rng() % 12]);
          break;
      }
      if (m.empty()) m.push_back(0);
    }
    try {
      auto ts = parse_safetensors(m.data(), m.size(), "mut", nullptr);
      ++accepted;
      for (const auto& t : ts) {  // whatever is accepted lies inside the buffer
        ASSERT_GE(t.data, m.data());
        ASSERT_LE(t.data + t.nbytes, m.data() + m.size());
        ASSERT_EQ(t.nbytes, static_cast<size_t>(t.numel()) * dtype_size(t.dtype));
      }
    } catch (const infini::Error& e) {
      ++rejected;
      ASSERT_EQ(std::string(e.what()).find('\n'), std::string::npos);
    } catch (const std::exception& e) {
      FAIL() << "non-infini exception: " << e.what();
    }
  }
  EXPECT_GT(rejected, 0);
  EXPECT_GT(accepted, 0);  // some mutations (in the data section) keep the file valid
}

// ---------------------------------------------------------------------------------------
// WeightStore

TEST_F(SafetensorsTest, WeightStoreSingleFile) {
  const std::vector<float> w = {1, 2, 3, 4, 5, 6};
  write_safetensors(path("model.safetensors"), {{"w", {2, 3}, w.data()}, {"v", {6}, w.data()}});
  auto ws = WeightStore::open_dir(dir_);
  EXPECT_EQ(ws.names(), (std::vector<std::string>{"v", "w"}));
  EXPECT_TRUE(ws.has("w"));
  EXPECT_FALSE(ws.has("x"));
  EXPECT_EQ(ws.get("w").shape, (std::vector<int64_t>{2, 3}));
  float out[6] = {};
  ws.read_f32("w", {2, 3}, out);
  EXPECT_TRUE(std::equal(out, out + 6, w.begin()));

  expect_error([&] { ws.get("missing.weight"); }, {"'missing.weight'", "not found", dir_});
  expect_error([&] { ws.read_f32("missing.weight", {1}, out); }, {"'missing.weight'", dir_});
  expect_error(
      [&] {
        ws.read_f32("w", {3, 2}, out);
      },
      {"'w'", "[2, 3]", "expected [3, 2]", "model.safetensors"});
  expect_error([&] { ws.read_f32("w", {6}, out); }, {"'w'", "[2, 3]", "[6]"});
  expect_error([&] { ws.read_f32("w", {2, 3, 1}, out); }, {"'w'", "[2, 3, 1]"});

  // A copy keeps the mappings alive after the original is gone.
  auto copy = std::make_unique<WeightStore>(ws);
  ws = WeightStore::open_dir(dir_);
  float again[6] = {};
  copy->read_f32("v", {6}, again);
  EXPECT_TRUE(std::equal(again, again + 6, w.begin()));
}

TEST_F(SafetensorsTest, WeightStoreSharded) {
  const std::vector<float> a = {1, 2}, b = {3, 4, 5}, c = {6};
  write_safetensors(path("model-00001-of-00002.safetensors"),
                    {{"a", {2}, a.data()}, {"b", {3}, b.data()}});
  write_safetensors(path("model-00002-of-00002.safetensors"), {{"c", {1}, c.data()}});
  // A stale single file must be ignored when an index exists.
  const std::vector<float> stale = {-1, -1};
  write_safetensors(path("model.safetensors"), {{"a", {2}, stale.data()}, {"s", {1}, c.data()}});
  put_text("model.safetensors.index.json", R"({"metadata":{"total_size":24},"weight_map":{
      "a":"model-00001-of-00002.safetensors","b":"model-00001-of-00002.safetensors",
      "c":"model-00002-of-00002.safetensors"}})");
  auto ws = WeightStore::open_dir(dir_);
  EXPECT_EQ(ws.names(), (std::vector<std::string>{"a", "b", "c"}));
  float out[3];
  ws.read_f32("a", {2}, out);
  EXPECT_EQ(out[0], 1);
  EXPECT_EQ(out[1], 2);
  ws.read_f32("b", {3}, out);
  EXPECT_EQ(out[2], 5);
  ws.read_f32("c", {1}, out);
  EXPECT_EQ(out[0], 6);
  // a and b come from one mapping of their shard (opened once), so b follows a directly.
  EXPECT_EQ(ws.get("b").data, ws.get("a").data + 8);
  expect_error([&] { ws.read_f32("c", {2}, out); }, {"'c'", "model-00002-of-00002.safetensors"});
}

TEST_F(SafetensorsTest, WeightStoreIndexErrors) {
  const std::vector<float> a = {1, 2};
  write_safetensors(path("s1.safetensors"), {{"a", {2}, a.data()}});
  const std::string idx = "model.safetensors.index.json";
  auto with_map = [&](const std::string& weight_map) {
    put_text(idx, R"({"weight_map":)" + weight_map + "}");
  };
  auto open = [&] { WeightStore::open_dir(dir_); };

  with_map(R"({"a":"s1.safetensors"})");
  EXPECT_NO_THROW(open());  // control

  with_map(R"({"a":"s1.safetensors","b":"s2.safetensors"})");
  expect_error(open, {idx, "s2.safetensors", "cannot open"});
  with_map(R"({"a":"s1.safetensors","zz":"s1.safetensors"})");
  expect_error(open, {idx, "'zz'", "missing from", "s1.safetensors"});
  with_map(R"({"a":"../s1.safetensors"})");
  expect_error(open, {idx, "../s1.safetensors", "not a plain file name"});
  with_map(R"({"a":"sub/s1.safetensors"})");
  expect_error(open, {idx, "sub/s1.safetensors", "not a plain file name"});
  with_map(R"({"a":".."})");
  expect_error(open, {idx, "not a plain file name"});
  with_map(R"({"a":""})");
  expect_error(open, {idx, "not a plain file name"});
  with_map(R"({"a":5})");
  expect_error(open, {idx, "'a'", "not a string"});
  with_map(R"(["s1.safetensors"])");
  expect_error(open, {idx, "weight_map"});
  put_text(idx, R"({"metadata":{}})");
  expect_error(open, {idx, "weight_map"});
  put_text(idx, R"({"weight_map":)");
  expect_error(open, {idx, "not valid JSON"});
  // A corrupt shard reports both the index and the shard.
  put("bad.safetensors", Bytes(3, 0));
  with_map(R"({"a":"bad.safetensors"})");
  expect_error(open, {idx, "bad.safetensors", "shorter than 8"});
}

TEST_F(SafetensorsTest, WeightStoreMissingFiles) {
  expect_error([&] { WeightStore::open_dir(dir_); },
               {dir_, "no model.safetensors or model.safetensors.index.json"});
  expect_error([&] { WeightStore::open_dir(path("nodir")); }, {"nodir", "not a directory"});
  put("model.safetensors", image(R"({"a":1})"));
  expect_error([&] { WeightStore::open_dir(dir_); }, {"model.safetensors", "'a'"});
}

// ---------------------------------------------------------------------------------------
// Writer failures: always an Error naming the path, never a partial file at the path.

TEST_F(SafetensorsTest, WriteRejectsBadInput) {
  const std::vector<float> v = {1, 2};
  const std::string p = path("out.safetensors");
  expect_error(
      [&] {
        write_safetensors(p, {{"a", {2}, v.data()}, {"a", {2}, v.data()}});
      },
      {p, "duplicate", "'a'"});
  expect_error(
      [&] {
        write_safetensors(p, {{"__metadata__", {2}, v.data()}});
      },
      {p, "__metadata__"});
  expect_error([&] { write_safetensors(p, {{"a", {-2}, v.data()}}); }, {p, "'a'", "negative"});
  expect_error(
      [&] {
        write_safetensors(p, {{"a", {1ll << 62, 8}, v.data()}});
      },
      {p, "'a'", "overflows"});
  expect_error([&] { write_safetensors(p, {{"a", {1ll << 62}, v.data()}}); }, {p, "'a'"});
  expect_error([&] { write_safetensors(p, {{"a", {2}, nullptr}}); }, {p, "'a'", "no data"});
  expect_error([&] { write_safetensors(p, {{"\xff", {2}, v.data()}}); }, {p, "UTF-8"});
  expect_error([&] { write_safetensors(p, {}, {{"k", "\xc3"}}); }, {p, "UTF-8"});
  expect_error(
      [&] {
        write_safetensors_raw(p, {{"r", DType::BF16, {3}, Bytes(4)}});
      },
      {p, "'r'", "has 4 bytes", "needs 6"});
  EXPECT_TRUE(listing().empty());
  EXPECT_NO_THROW(write_safetensors(p, {{"a", {0}, nullptr}}));  // control: empty tensor
}

TEST_F(SafetensorsTest, WriteToUnwritablePlacesThrows) {
  const std::vector<float> v = {1, 2};
  const std::vector<TensorView> t = {{"a", {2}, v.data()}};
  const std::string nodir = path("no/such/dir/out.safetensors");
  expect_error([&] { write_safetensors(nodir, t); }, {nodir, "No such file or directory"});
  put_text("afile", "x");
  const std::string under_file = path("afile/out.safetensors");
  expect_error([&] { write_safetensors(under_file, t); }, {under_file, "Not a directory"});
  // The target is a directory: the rename fails and the temp file is cleaned up.
  fs::create_directory(path("target"));
  expect_error([&] { write_safetensors(path("target"), t); }, {path("target"), "rename"});
  EXPECT_EQ(listing(), (std::vector<std::string>{"afile", "target"}));
  if (::geteuid() != 0) {  // root ignores permission bits
    fs::create_directory(path("ro"));
    fs::permissions(path("ro"), fs::perms::owner_read | fs::perms::owner_exec);
    const std::string ro = path("ro/out.safetensors");
    expect_error([&] { write_safetensors(ro, t); }, {ro, "Permission denied"});
    EXPECT_TRUE(listing("ro").empty());
  }
}

// Writes a 1 MiB tensor to `target` in a child limited to 64 KiB files. Returns the
// child's exit status: 0 when it got an infini::Error naming the path and EFBIG.
int write_under_fsize_limit(const std::string& target) {
  pid_t pid = ::fork();
  if (pid == 0) {
    ::signal(SIGXFSZ, SIG_IGN);  // so write() fails with EFBIG instead of killing us
    struct rlimit lim = {64 << 10, 64 << 10};
    if (::setrlimit(RLIMIT_FSIZE, &lim) != 0) ::_exit(3);
    std::vector<float> big(1 << 18, 1.0f);
    try {
      write_safetensors(target, {{"big", {1 << 18}, big.data()}});
    } catch (const infini::Error& e) {
      const std::string m = e.what();
      const bool ok =
          m.find(target) != std::string::npos && m.find(std::strerror(EFBIG)) != std::string::npos;
      ::_exit(ok ? 0 : 4);
    } catch (...) {
      ::_exit(5);
    }
    ::_exit(6);  // the write "succeeded"
  }
  int status = 0;
  ::waitpid(pid, &status, 0);
  return WIFEXITED(status) ? WEXITSTATUS(status) : 100 + WTERMSIG(status);
}

TEST_F(SafetensorsTest, WriteUnderFileSizeLimitFailsCleanly) {
  // No previous file: none must appear.
  const std::string fresh = path("fresh.safetensors");
  EXPECT_EQ(write_under_fsize_limit(fresh), 0);
  EXPECT_FALSE(fs::exists(fresh));
  EXPECT_TRUE(listing().empty()) << "temp file left behind";

  // A previous file: it must survive untouched.
  const std::vector<float> old = {9, 8, 7};
  const std::string p = path("model.safetensors");
  write_safetensors(p, {{"old", {3}, old.data()}});
  const Bytes before = read_all(p);
  EXPECT_EQ(write_under_fsize_limit(p), 0);
  EXPECT_EQ(read_all(p), before);
  EXPECT_EQ(listing(), std::vector<std::string>{"model.safetensors"});
  auto ws = WeightStore::open_dir(dir_);
  float out[3];
  ws.read_f32("old", {3}, out);
  EXPECT_EQ(out[2], 7);
}

}  // namespace
