// TensorRT IPluginV3 wrapper of the CUDA RoPEAlignedAttention kernel (rope_attention.cu).
//
// Op: harmony_rt::RoPEAlignedAttention, version "1"; ONNX nodes reach it through the parser's plugin
// fallback when they carry plugin_namespace = "harmony_rt" (engines/build.py adds it).
// Inputs: q, k, v [N,H,L,D] fp32|fp16 (same type); cos_q, sin_q, cos_k, sin_k [L,D/2], t_q, t_k [L] fp32.
// Attribute: window (float32; < 0 disables the mask). Output: [N,H,Lq,D], q's type.
//
// Built only where NvInfer.h is found (see CMakeLists.txt). NOT compiled or run on the development
// machines, which have no TensorRT headers and no GPU.
#pragma once

#include <NvInfer.h>

#include <string>
#include <vector>

namespace harmony_rt {

constexpr char const* kPluginName = "RoPEAlignedAttention";
constexpr char const* kPluginVersion = "1";
constexpr char const* kPluginNamespace = "harmony_rt";

class RoPEAlignedAttentionPlugin : public nvinfer1::IPluginV3,
                                   public nvinfer1::IPluginV3OneCore,
                                   public nvinfer1::IPluginV3OneBuild,
                                   public nvinfer1::IPluginV3OneRuntime {
 public:
  explicit RoPEAlignedAttentionPlugin(float window);
  RoPEAlignedAttentionPlugin(RoPEAlignedAttentionPlugin const& other);
  ~RoPEAlignedAttentionPlugin() override = default;

  // IPluginV3
  nvinfer1::IPluginCapability* getCapabilityInterface(nvinfer1::PluginCapabilityType type) noexcept override;
  nvinfer1::IPluginV3* clone() noexcept override;

  // IPluginV3OneCore
  char const* getPluginName() const noexcept override { return kPluginName; }
  char const* getPluginVersion() const noexcept override { return kPluginVersion; }
  char const* getPluginNamespace() const noexcept override { return kPluginNamespace; }

  // IPluginV3OneBuild
  int32_t getNbOutputs() const noexcept override { return 1; }
  int32_t configurePlugin(nvinfer1::DynamicPluginTensorDesc const* in, int32_t nbInputs,
                          nvinfer1::DynamicPluginTensorDesc const* out, int32_t nbOutputs) noexcept override;
  bool supportsFormatCombination(int32_t pos, nvinfer1::DynamicPluginTensorDesc const* inOut, int32_t nbInputs,
                                 int32_t nbOutputs) noexcept override;
  int32_t getOutputDataTypes(nvinfer1::DataType* outputTypes, int32_t nbOutputs,
                             nvinfer1::DataType const* inputTypes, int32_t nbInputs) const noexcept override;
  int32_t getOutputShapes(nvinfer1::DimsExprs const* inputs, int32_t nbInputs, nvinfer1::DimsExprs const* shapeInputs,
                          int32_t nbShapeInputs, nvinfer1::DimsExprs* outputs, int32_t nbOutputs,
                          nvinfer1::IExprBuilder& exprBuilder) noexcept override;

  // IPluginV3OneRuntime
  int32_t enqueue(nvinfer1::PluginTensorDesc const* inputDesc, nvinfer1::PluginTensorDesc const* outputDesc,
                  void const* const* inputs, void* const* outputs, void* workspace,
                  cudaStream_t stream) noexcept override;
  int32_t onShapeChange(nvinfer1::PluginTensorDesc const* in, int32_t nbInputs, nvinfer1::PluginTensorDesc const* out,
                        int32_t nbOutputs) noexcept override;
  nvinfer1::IPluginV3* attachToContext(nvinfer1::IPluginResourceContext* context) noexcept override;
  nvinfer1::PluginFieldCollection const* getFieldsToSerialize() noexcept override;
  size_t getWorkspaceSize(nvinfer1::DynamicPluginTensorDesc const* inputs, int32_t nbInputs,
                          nvinfer1::DynamicPluginTensorDesc const* outputs, int32_t nbOutputs) const noexcept override {
    return 0;
  }

 private:
  void initFields();

  float mWindow;
  std::vector<nvinfer1::PluginField> mFields;
  nvinfer1::PluginFieldCollection mFC{};
};

class RoPEAlignedAttentionPluginCreator : public nvinfer1::IPluginCreatorV3One {
 public:
  RoPEAlignedAttentionPluginCreator();
  char const* getPluginName() const noexcept override { return kPluginName; }
  char const* getPluginVersion() const noexcept override { return kPluginVersion; }
  char const* getPluginNamespace() const noexcept override { return kPluginNamespace; }
  nvinfer1::PluginFieldCollection const* getFieldNames() noexcept override { return &mFC; }
  nvinfer1::IPluginV3* createPlugin(char const* name, nvinfer1::PluginFieldCollection const* fc,
                                    nvinfer1::TensorRTPhase phase) noexcept override;

 private:
  std::vector<nvinfer1::PluginField> mAttrs;
  nvinfer1::PluginFieldCollection mFC{};
};

}  // namespace harmony_rt
