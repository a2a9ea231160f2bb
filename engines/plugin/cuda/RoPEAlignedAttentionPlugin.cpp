// IPluginV3 wrapper + creator + loadLibrary entry points (getCreators / setLoggerFinder).
// NOT compiled or run on the development machines (no TensorRT headers, no GPU): see the header.
#include "RoPEAlignedAttentionPlugin.h"

#include <cstring>
#include <new>

#include "rope_attention.h"

using namespace nvinfer1;

namespace harmony_rt {
namespace {

constexpr int32_t kNbInputs = 9;  // q, k, v, cos_q, sin_q, cos_k, sin_k, t_q, t_k
constexpr int32_t kQ = 0, kK = 1, kV = 2, kOut = kNbInputs;

}  // namespace

RoPEAlignedAttentionPlugin::RoPEAlignedAttentionPlugin(float window) : mWindow(window) { initFields(); }

RoPEAlignedAttentionPlugin::RoPEAlignedAttentionPlugin(RoPEAlignedAttentionPlugin const& other)
    : mWindow(other.mWindow) {
  initFields();  // the field list points at this object's mWindow, never the source's
}

void RoPEAlignedAttentionPlugin::initFields() {
  mFields.clear();
  mFields.emplace_back("window", &mWindow, PluginFieldType::kFLOAT32, 1);
  mFC.nbFields = static_cast<int32_t>(mFields.size());
  mFC.fields = mFields.data();
}

IPluginCapability* RoPEAlignedAttentionPlugin::getCapabilityInterface(PluginCapabilityType type) noexcept {
  switch (type) {
    case PluginCapabilityType::kBUILD: return static_cast<IPluginV3OneBuild*>(this);
    case PluginCapabilityType::kRUNTIME: return static_cast<IPluginV3OneRuntime*>(this);
    case PluginCapabilityType::kCORE: return static_cast<IPluginV3OneCore*>(this);
  }
  return nullptr;
}

IPluginV3* RoPEAlignedAttentionPlugin::clone() noexcept {
  return new (std::nothrow) RoPEAlignedAttentionPlugin(*this);
}

int32_t RoPEAlignedAttentionPlugin::configurePlugin(DynamicPluginTensorDesc const* in, int32_t nbInputs,
                                                    DynamicPluginTensorDesc const* out, int32_t nbOutputs) noexcept {
  if (nbInputs != kNbInputs || nbOutputs != 1) return -1;
  if (in[kQ].desc.dims.nbDims != 4) return -1;
  int64_t const D = in[kQ].desc.dims.d[3];  // -1 when dynamic: the head dim must be static
  return (D >= 2 && D % 2 == 0 && D <= 256) ? 0 : -1;
}

bool RoPEAlignedAttentionPlugin::supportsFormatCombination(int32_t pos, DynamicPluginTensorDesc const* inOut,
                                                           int32_t nbInputs, int32_t nbOutputs) noexcept {
  if (nbInputs != kNbInputs || nbOutputs != 1 || pos < 0 || pos > kOut) return false;
  PluginTensorDesc const& d = inOut[pos].desc;
  if (d.format != TensorFormat::kLINEAR) return false;
  if (pos == kQ) return d.type == DataType::kFLOAT || d.type == DataType::kHALF;
  if (pos == kK || pos == kV || pos == kOut) return d.type == inOut[kQ].desc.type;
  return d.type == DataType::kFLOAT;  // rotary tables and temporal positions
}

int32_t RoPEAlignedAttentionPlugin::getOutputDataTypes(DataType* outputTypes, int32_t nbOutputs,
                                                       DataType const* inputTypes, int32_t nbInputs) const noexcept {
  if (nbOutputs != 1 || nbInputs != kNbInputs) return -1;
  outputTypes[0] = inputTypes[kQ];
  return 0;
}

int32_t RoPEAlignedAttentionPlugin::getOutputShapes(DimsExprs const* inputs, int32_t nbInputs,
                                                    DimsExprs const* /*shapeInputs*/, int32_t /*nbShapeInputs*/,
                                                    DimsExprs* outputs, int32_t nbOutputs,
                                                    IExprBuilder& /*exprBuilder*/) noexcept {
  if (nbInputs != kNbInputs || nbOutputs != 1 || inputs[kQ].nbDims != 4) return -1;
  outputs[0] = inputs[kQ];  // [N, H, Lq, D]
  return 0;
}

int32_t RoPEAlignedAttentionPlugin::enqueue(PluginTensorDesc const* inputDesc, PluginTensorDesc const* /*outputDesc*/,
                                            void const* const* inputs, void* const* outputs, void* /*workspace*/,
                                            cudaStream_t stream) noexcept {
  Dims const& q = inputDesc[kQ].dims;  // [N, H, Lq, D]
  Dims const& k = inputDesc[kK].dims;  // [N, H, Lk, D]
  int const dtype = inputDesc[kQ].type == DataType::kHALF ? HRT_DTYPE_FLOAT16 : HRT_DTYPE_FLOAT32;
  int const status = harmony_rope_attn_launch(
      inputs[kQ], inputs[kK], inputs[kV], static_cast<float const*>(inputs[3]), static_cast<float const*>(inputs[4]),
      static_cast<float const*>(inputs[5]), static_cast<float const*>(inputs[6]), static_cast<float const*>(inputs[7]),
      static_cast<float const*>(inputs[8]), outputs[0], static_cast<int>(q.d[0]), static_cast<int>(q.d[1]),
      static_cast<int>(q.d[2]), static_cast<int>(k.d[2]), static_cast<int>(q.d[3]), mWindow, dtype, stream);
  return status == 0 ? 0 : -1;
}

int32_t RoPEAlignedAttentionPlugin::onShapeChange(PluginTensorDesc const* in, int32_t nbInputs,
                                                  PluginTensorDesc const* /*out*/, int32_t nbOutputs) noexcept {
  return (nbInputs == kNbInputs && nbOutputs == 1 && in[kQ].dims.nbDims == 4) ? 0 : -1;
}

IPluginV3* RoPEAlignedAttentionPlugin::attachToContext(IPluginResourceContext* /*context*/) noexcept {
  return clone();
}

PluginFieldCollection const* RoPEAlignedAttentionPlugin::getFieldsToSerialize() noexcept { return &mFC; }

RoPEAlignedAttentionPluginCreator::RoPEAlignedAttentionPluginCreator() {
  mAttrs.emplace_back("window", nullptr, PluginFieldType::kFLOAT32, 1);
  mFC.nbFields = static_cast<int32_t>(mAttrs.size());
  mFC.fields = mAttrs.data();
}

IPluginV3* RoPEAlignedAttentionPluginCreator::createPlugin(char const* /*name*/, PluginFieldCollection const* fc,
                                                           TensorRTPhase /*phase*/) noexcept {
  float window = -1.0f;  // ONNX attribute default: no mask
  for (int32_t i = 0; fc != nullptr && i < fc->nbFields; ++i) {
    PluginField const& f = fc->fields[i];
    if (f.name != nullptr && std::strcmp(f.name, "window") == 0 && f.data != nullptr) {
      if (f.type == PluginFieldType::kFLOAT32) window = *static_cast<float const*>(f.data);
      else if (f.type == PluginFieldType::kFLOAT64) window = static_cast<float>(*static_cast<double const*>(f.data));
      else return nullptr;
    }
    // Other fields (plugin_namespace, plugin_version, aot from the ONNX node) are ignored.
  }
  return new (std::nothrow) RoPEAlignedAttentionPlugin(window);
}

}  // namespace harmony_rt

// Entry points IPluginRegistry::loadLibrary looks up (trt.get_plugin_registry().load_library(path)).
extern "C" __attribute__((visibility("default"))) void setLoggerFinder(nvinfer1::ILoggerFinder* /*finder*/) {}

extern "C" __attribute__((visibility("default"))) nvinfer1::IPluginCreatorInterface* const* getCreators(
    int32_t& nbCreators) {
  static harmony_rt::RoPEAlignedAttentionPluginCreator creator;
  static nvinfer1::IPluginCreatorInterface* const creators[] = {&creator};
  nbCreators = 1;
  return creators;
}
