# Compiles one ASL file with iasl and wraps the AML in a C++ source:
#   extern const unsigned char k<NAME>Aml[]; extern const unsigned int k<NAME>AmlSize;
# (iasl's own -tc output is C with its own names; a plain byte dump keeps our naming and -Werror.)
execute_process(
  COMMAND ${IASL} -p ${WORK}/${NAME} ${ASL}
  RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
if(NOT rc EQUAL 0)
  message(FATAL_ERROR "iasl failed on ${ASL}:\n${out}\n${err}")
endif()
file(READ ${WORK}/${NAME}.aml hex HEX)
string(LENGTH "${hex}" hexlen)
math(EXPR size "${hexlen} / 2")
string(REGEX REPLACE "([0-9a-f][0-9a-f])" "0x\\1," bytes "${hex}")
file(WRITE ${OUT}
  "// Generated from ${ASL} by iasl; do not edit.\n"
  "namespace pier::acpi::aml {\n"
  "extern const unsigned char k${NAME}[];\n"
  "extern const unsigned int k${NAME}Size;\n"
  "const unsigned char k${NAME}[] = {${bytes}};\n"
  "const unsigned int k${NAME}Size = ${size};\n"
  "}\n")
